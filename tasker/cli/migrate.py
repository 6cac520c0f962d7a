"""``tasker migrate``: create or upgrade the database schema (idempotent)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tasker.errors import EXIT_DATABASE, EXIT_FAILED, one_line
from tasker.migrate import DatabaseUnreachable, MigrationError, migrate
from tasker.settings import get_settings


def register(sub: Any) -> None:
    p = sub.add_parser("migrate", help="create or upgrade the database schema (idempotent)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        applied = migrate(settings.database_url)
    except MigrationError as exc:
        # libpq's messages span lines: one line, and its own code when unreachable.
        print(f"tasker migrate: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_DATABASE if isinstance(exc, DatabaseUnreachable) else EXIT_FAILED
    target = settings.database_url_redacted
    if applied:
        for m in applied:
            print(f"applied {m.version:04d}_{m.name}")
        print(f"{len(applied)} migration(s) applied to {target}")
    else:
        print(f"schema is up to date ({target})")
    return 0
