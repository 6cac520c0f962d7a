"""Exit codes of ``tasker`` commands and the worker, and the one line a failure prints.

A failure an operator can fix (a service that cannot be reached, a handler
module that does not import) is printed as one line naming the cause, with
an exit code of its own so that scripts can tell the causes apart; the
traceback only with ``tasker --debug`` or at DEBUG level. Which exception
is which cause is decided by the commands (:mod:`tasker.cli.failures`): this
module sits at the bottom and imports no driver.
"""

from __future__ import annotations

from tasker.redact import redact_text

__all__ = ["EXIT_FAILED", "EXIT_NODE", "EXIT_CONFIG", "EXIT_BROKER", "EXIT_DATABASE",
           "EXIT_HANDLERS", "one_line"]

#: Anything else that failed (also: no task request with that id).
EXIT_FAILED = 1
#: ``tasker stats``: no node answered (1 since the command was first documented).
EXIT_NODE = 1
#: A setting is invalid, or the command line is (argparse's own code).
EXIT_CONFIG = 2
#: The broker cannot be reached.
EXIT_BROKER = 3
#: The database cannot be reached.
EXIT_DATABASE = 4
#: A module in ``workers/`` cannot be imported (syntax error, error at import).
EXIT_HANDLERS = 6


def one_line(text: str) -> str:
    """``text`` on one line, its password removed (drivers' messages span lines)."""
    return redact_text(" ".join(str(text).split()))
