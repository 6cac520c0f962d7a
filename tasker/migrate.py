"""``tasker migrate``: ordered SQL migrations, applied once each, idempotently.

Migrations are the files ``tasker/migrations/NNNN_name.sql``, applied in order,
each in its own transaction, and recorded in ``tasker_schema_migrations``. A
PostgreSQL advisory lock makes concurrent runs (two containers starting at
once) wait for each other instead of racing. The target database is created
first if it does not exist.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tasker.redact import redact_text

__all__ = ["migrate", "Migration", "MigrationError", "DatabaseUnreachable",
           "available_migrations"]

#: Arbitrary constant naming tasker's advisory lock.
_LOCK_KEY = 0x7A5C_E001
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration could not be applied; the message never contains a password."""


class DatabaseUnreachable(MigrationError):
    """The server could not be reached at all (its own exit code in the CLI)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available_migrations() -> list[Migration]:
    """Every migration shipped with tasker, in version order."""
    found = []
    for entry in resources.files("tasker.migrations").iterdir():
        match = _FILE_RE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.version)


def ensure_database(database_url: str) -> bool:
    """Create the URL's database if it does not exist; True when it was created."""
    params = conninfo_to_dict(database_url)
    dbname = params.get("dbname") or params.get("user") or "postgres"
    try:
        psycopg.connect(database_url, connect_timeout=5).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise DatabaseUnreachable(
                redact_text(f"cannot connect to the database: {exc}")) from None
    admin = make_conninfo(database_url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    except psycopg.errors.DuplicateDatabase:
        return False  # created by a concurrent run
    except psycopg.Error as exc:
        raise MigrationError(redact_text(f"cannot create database {dbname!r}: {exc}")) from None
    return True


def migrate(database_url: str) -> list[Migration]:
    """Apply every pending migration; returns those applied (empty: nothing to do)."""
    ensure_database(database_url)
    applied_now: list[Migration] = []
    try:
        with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", [_LOCK_KEY])
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS tasker_schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {row[0]: row[1] for row in conn.execute(
                    "SELECT version, checksum FROM tasker_schema_migrations")}
                for migration in available_migrations():
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            raise MigrationError(
                                f"migration {migration.version:04d}_{migration.name} was changed "
                                "after it was applied; add a new migration instead")
                        continue
                    with conn.transaction():
                        conn.execute(migration.sql)  # type: ignore[arg-type]
                        conn.execute(
                            "INSERT INTO tasker_schema_migrations (version, name, checksum)"
                            " VALUES (%s, %s, %s)",
                            [migration.version, migration.name, migration.checksum])
                    applied_now.append(migration)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", [_LOCK_KEY])
    except psycopg.Error as exc:
        raise MigrationError(redact_text(f"migration failed: {exc}")) from None
    return applied_now
