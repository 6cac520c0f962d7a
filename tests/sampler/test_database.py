"""sample_database against the real PostgreSQL on 127.0.0.1:5432 (trust auth)."""

from __future__ import annotations

import time
import traceback
import uuid

import psycopg
import pytest

from tasker.sampler.database import DatabaseSampleError, sample_database

SERVER = "postgresql://root@127.0.0.1:5432"


@pytest.fixture
def private_db():
    """A database of our own, so its pg_stat_activity rows are exactly ours."""
    name = f"tasker_sampler_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{SERVER}/{name}"
    finally:
        with psycopg.connect(f"{SERVER}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_counts_held_connections_by_state_and_not_itself(private_db):
    # Nobody else is connected, and the sampler leaves its own connection out.
    assert sample_database(private_db).connections_by_state == {}

    with psycopg.connect(private_db, autocommit=True) as idle, \
            psycopg.connect(private_db) as in_transaction:
        idle.execute("SELECT 1")
        in_transaction.execute("SELECT 1")  # opens a transaction, left open
        sample = sample_database(private_db)

    assert sample.connections_by_state == {"idle": 1, "idle in transaction": 1}


def test_max_connections_is_the_servers(private_db):
    with psycopg.connect(private_db) as conn:
        expected = int(conn.execute("SHOW max_connections").fetchone()[0])
    sample = sample_database(private_db)
    assert sample.max_connections == expected > 0


def test_shared_database_sees_an_open_connection():
    conninfo = f"{SERVER}/test"
    with psycopg.connect(conninfo, autocommit=True) as held:
        held.execute("SELECT 1")
        sample = sample_database(conninfo)
    assert sample.connections_by_state.get("idle", 0) >= 1
    assert all(isinstance(n, int) and n > 0 for n in sample.connections_by_state.values())


@pytest.mark.parametrize("conninfo", [
    "postgresql://root:hunter2secret@127.0.0.1:1/test",
    "postgresql://root:hunter2secret@127.0.0.1:5432/no_such_db_tasker_sampler",
    "host=127.0.0.1 port=1 user=root password=hunter2secret dbname=test",
    "host=127.0.0.1 password=hunter2secret bogus",
])
def test_failure_raises_without_password(conninfo):
    started = time.monotonic()
    with pytest.raises(DatabaseSampleError) as info:
        sample_database(conninfo, timeout=2)
    assert time.monotonic() - started < 5
    rendered = "".join(traceback.format_exception(info.value))
    assert "hunter2secret" not in rendered
    assert "\n" not in str(info.value)
