"""Test support: private Prometheus and redis-server processes, started and stopped one way.

Several tests run a real Prometheus (the shipped rules against a real or fake
node) or their own redis-server (a Sentinel trio). Each used to carry its own
copy of the binary lookup, the command line, the log file and the
terminate-then-kill cleanup; these helpers are that code once:

* :func:`binary` finds a system binary (``PATH``, then ``/usr/bin``) or fails the
  test with the package to install: a missing tool is a failure, not a skip.
* :func:`prometheus_config` writes the usual config: 1 s scrape and rule
  intervals, rule files, one ``tasker-worker`` job over static targets.
* :func:`start_prometheus` runs ``prometheus`` on a free loopback port with its
  data and log under a test directory, and stops it on exit.
* :func:`start_redis_server` runs ``redis-server`` without persistence on a free
  (or given) loopback port, waits until it answers, and stops it on exit.
* :func:`start_beat` runs ``celery -A tasker beat`` in a session of its own;
  :func:`stop_group` stops it (and anything it started).
* :func:`start_logged` / :func:`stop` are the process plumbing under all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from support import REPO, free_port

PROMETHEUS_HINT = "apt-get install -y prometheus"
REDIS_HINT = "apt-get install -y redis-server"


def binary(name: str, hint: str) -> str:
    """The path of the system binary ``name``; fails the test (naming ``hint``) without it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file()
                                  else None)
    if path is None:
        pytest.fail(f"{name} not found: {hint}", pytrace=False)
    return path


def start_logged(argv: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
                 cwd: Path = REPO) -> subprocess.Popen[bytes]:
    """``argv`` in a session of its own, stdout and stderr to ``log``."""
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, env=env,
                                cwd=cwd, start_new_session=True)


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; nothing when it already exited."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM to the process's session, SIGKILL to it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def start_beat(env: dict[str, str], log: Path, *, cwd: Path = REPO,
               schedule: Path | None = None) -> subprocess.Popen[bytes]:
    """``celery -A tasker beat`` with ``env``, output to ``log``; stopped by :func:`stop_group`."""
    argv = [sys.executable, "-m", "celery", "-A", "tasker", "beat"]
    if schedule is not None:
        argv += ["--schedule", str(schedule)]
    return start_logged(argv, log, env=env, cwd=cwd)


# --- Prometheus ---------------------------------------------------------------------

def prometheus_config(path: Path, targets: Iterable[str], rule_files: Iterable[Path | str] = (),
                      job: str = "tasker-worker") -> Path:
    """Write a config scraping ``targets`` as ``job`` every second, with ``rule_files``."""
    rules = [str(p) for p in rule_files]
    path.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        + ("rule_files:\n" + "".join(f"  - {json.dumps(r)}\n" for r in rules) if rules else "")
        + f"scrape_configs:\n  - job_name: {job}\n    static_configs:\n"
        f"      - targets: {json.dumps(list(targets))}\n")
    return path


@dataclass
class PrometheusServer:
    """A running private Prometheus: its URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        """GET ``path`` of the HTTP API with ``params`` (lists repeat the key), as JSON."""
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result; [] while the server does not answer yet.

        Fails at once (with the log) when the server exited.
        """
        assert self.process.poll() is None, self.log_tail()
        try:
            return self.get("/api/v1/query", query=expr)["data"]["result"]
        except urllib.error.HTTPError:
            raise
        except (OSError, ValueError):  # refused, reset, not JSON yet: still starting
            return []


@contextmanager
def start_prometheus(config: Path, work: Path,
                     extra_args: Sequence[str] = ()) -> Iterator[PrometheusServer]:
    """Prometheus with ``config`` on a free loopback port; data and log in ``work``.

    Yields at once (the caller waits for what it needs, e.g. a first scrape);
    stops the server on exit.
    """
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / "prometheus.log"
    process = start_logged(
        [binary("prometheus", PROMETHEUS_HINT), f"--config.file={config}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn", *extra_args], log)
    try:
        yield PrometheusServer(f"http://127.0.0.1:{port}", process, log)
    finally:
        stop(process)


# --- redis-server -------------------------------------------------------------------

@dataclass
class RedisServer:
    """A running private redis-server."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@contextmanager
def start_redis_server(work: Path, name: str = "redis", *, port: int | None = None,
                       args: Sequence[str] = (), wait: bool = True) -> Iterator[RedisServer]:
    """redis-server on loopback without persistence, its files in ``work``.

    ``name`` names the log (``<name>.log``); ``args`` are added to the command
    line (``--replicaof`` ...). With ``wait`` it yields once the server answers
    PING. Stops the server on exit (a test may have killed it already).
    """
    work.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = work / f"{name}.log"
    process = start_logged(
        [binary("redis-server", REDIS_HINT), "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(work), *args], log)
    try:
        if wait:
            deadline = time.monotonic() + 30
            client = redis.Redis(port=port, socket_timeout=2)
            try:
                while True:
                    assert process.poll() is None, log.read_text(errors="replace")
                    try:
                        if client.ping():
                            break
                    except redis.RedisError:
                        pass
                    assert time.monotonic() < deadline, f"redis-server on {port} did not answer"
                    time.sleep(0.05)
            finally:
                client.close()
        yield RedisServer(port, process, log)
    finally:
        stop(process)
