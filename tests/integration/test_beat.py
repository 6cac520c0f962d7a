"""``celery -A tasker beat`` as an operator runs it (issue 2.4, item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from support import wait_for

from tasker.cli.embedded_services import EmbeddedRedis


def _run_beat(tmp_path: Path, *args: str, wait: float = 30) -> str:
    """Beat for a few intervals in an empty working directory; its output."""
    with EmbeddedRedis(tmp_path / "redis") as server:
        env = {**os.environ, "TASKER_BROKER_URL": server.url, "TASKER_SAMPLE_INTERVAL": "1",
               "TASKER_LOG_FORMAT": "json"}
        env.pop("TASKER_LOG_LEVEL", None)
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        log = tmp_path / "beat.log"
        with log.open("wb") as out:
            beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "tasker", "beat", *args],
                                    cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        try:
            wait_for(lambda: log.read_text().count("Sending due task") >= 2, timeout=wait,
                     interval=0.2, message="beat sending samples")
        except AssertionError:
            pass  # the assertions below say what is missing
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(timeout=20)
        # No schedule file in the working directory (celerybeat-schedule.* used to be left).
        assert list(cwd.iterdir()) == []
        return log.read_text()


def _events(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_beat_says_what_it_schedules_and_each_send(tmp_path):
    text = _run_beat(tmp_path, "--loglevel", "INFO")
    events = _events(text)
    started = [e for e in events if e.get("event") == "beat.started"]
    assert len(started) == 1, text
    schedule = started[0]["schedule"]
    assert schedule["tasker.sample_fleet"] == {"every_seconds": 1.0, "queue": "tasker.periodic"}
    assert "tasker.recover_steps" in schedule
    sent = [e for e in events if "Sending due task" in str(e.get("event", ""))]
    assert len(sent) >= 2, text


def test_plain_beat_logs_at_info(tmp_path):
    # Without -l, TASKER_LOG_LEVEL (INFO) decides (beat logged only warnings).
    text = _run_beat(tmp_path, wait=6)
    assert any(e.get("event") == "beat.started" for e in _events(text)), text
