"""``tasker``: the command-line entry point; one module per sub-command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tasker.settings import SettingsError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    from tasker.cli import demo, load, migrate, sample, stats, workflow

    parser = argparse.ArgumentParser(
        prog="tasker", description="A Celery worker fleet with observability built in.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, load, migrate, sample, stats, workflow):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except SettingsError as exc:
        print(f"tasker: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
