"""``tasker``: the command-line entry point; one module per sub-command.

A command that fails prints one line (``tasker <command>: <cause>``) and exits
with the cause's code (:mod:`tasker.errors`): a service that cannot be reached
or a handler module that does not import is something to fix, not a bug to
debug. ``tasker --debug <command>`` (or ``TASKER_LOG_LEVEL=DEBUG``) adds the
traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from tasker.cli import demo, load, migrate, sample, schedule, stats, workflow
from tasker.cli.failures import describe
from tasker.errors import EXIT_CONFIG
from tasker.loader import TaskerLoader
from tasker.settings import SettingsError, get_settings

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasker", description="A Celery worker fleet with observability built in.")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (else one line)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, load, migrate, sample, schedule, stats, workflow):
        module.register(sub)
    return parser


def _debug_level() -> bool:
    try:
        return get_settings().log_level == "DEBUG"
    except Exception:  # noqa: BLE001 - a bad setting is reported on its own
        return False


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    # The command prints a broken handler module's line itself (with --debug's traceback).
    TaskerLoader.raise_import_errors = True
    try:
        return int(args.run(args) or 0)
    except SettingsError as exc:
        print(f"tasker: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends in one line and its code
        code, line = describe(exc)
        if args.debug or _debug_level():
            traceback.print_exc()
        print(f"tasker {args.command}: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
