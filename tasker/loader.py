"""Celery's loader, with one line for a handler module that cannot be imported.

Celery imports the modules of ``workers/`` (the ``imports`` setting) in the
worker and beat before their logging is set up; a syntax error there used to
end the worker with a 71-line traceback. This loader prints one line naming
the module, the line and the error, and exits with
:data:`tasker.errors.EXIT_HANDLERS`; the traceback too at DEBUG level.
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

from celery.loaders.app import AppLoader

from tasker.errors import EXIT_HANDLERS
from tasker.registry import describe_import_failure
from tasker.settings import get_settings

__all__ = ["TaskerLoader"]


class TaskerLoader(AppLoader):
    """Celery's default loader, failing in one line on a broken handler module."""

    #: Set by the ``tasker`` command: it prints the line itself (and knows ``--debug``).
    raise_import_errors = False

    def import_default_modules(self) -> Any:
        try:
            return super().import_default_modules()
        except Exception as exc:
            line = describe_import_failure(exc)
            if line is None or self.raise_import_errors:
                raise
            if _debug_level(self.app):
                traceback.print_exc()
            print(f"tasker: {line}", file=sys.stderr)
            raise SystemExit(EXIT_HANDLERS) from None


def _debug_level(app: Any) -> bool:
    # The worker's --loglevel is not known yet at this point; TASKER_LOG_LEVEL is.
    try:
        return get_settings().log_level == "DEBUG" or any(
            a.upper().endswith("DEBUG") for a in sys.argv[1:])
    except Exception:  # noqa: BLE001 - a bad setting is reported elsewhere
        return False
