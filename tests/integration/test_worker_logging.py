"""``celery -A tasker worker`` as an operator starts it: without ``-l``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from support import REPO, SESSION, free_port, http_get, wait_for


def _plain_worker(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / "worker.log"
    argv = [sys.executable, "-m", "celery", "-A", "tasker", "worker", "--pool", "prefork",
            "-c", "2", "-Q", f"{SESSION}-plain-{tmp_path.name}", "-n", f"plain-{os.getpid()}@%h",
            "--without-mingle", "--without-gossip"]  # no -l / --loglevel
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _events(log: Path) -> list[dict]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                pass
    return events


def test_tasker_log_level_decides_when_no_loglevel_is_given(tmp_path: Path,
                                                            database_url: str) -> None:
    """Default INFO: ``metrics.serving`` names the port bound for ``TASKER_METRICS_PORT=0``."""
    os.environ.pop("TASKER_LOG_LEVEL", None)
    proc, log = _plain_worker(tmp_path, {"TASKER_METRICS_PORT": "0",
                                         "TASKER_METRICS_INTERVAL": "0"})
    try:
        serving = wait_for(lambda: next((e for e in _events(log)
                                         if e.get("event") == "metrics.serving"), None),
                           timeout=60, message="metrics.serving")
        assert serving["port"] > 0 and serving["level"] == "INFO"
        status, _, _ = http_get(f"http://127.0.0.1:{serving['port']}/healthz")
        assert status in (200, 503)
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_quieter_tasker_log_level_is_honoured_too(tmp_path: Path, database_url: str) -> None:
    port = free_port()
    proc, log = _plain_worker(tmp_path, {"TASKER_METRICS_PORT": str(port),
                                         "TASKER_METRICS_INTERVAL": "0",
                                         "TASKER_LOG_LEVEL": "WARNING"})
    try:
        wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=60,
                 message="the node's endpoint")
        assert proc.poll() is None
        assert not any(e.get("level") == "INFO" for e in _events(log)), log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def _answers(url: str) -> bool:
    try:
        return http_get(url, timeout=2)[0] in (200, 503)
    except OSError:
        return False
