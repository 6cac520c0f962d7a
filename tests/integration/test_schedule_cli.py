"""``tasker schedule``: the configured entries, and one line with its exit code on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from support import REPO, free_port

from tasker.errors import EXIT_BROKER, EXIT_FAILED

CLOSED = free_port()  # bound once and released: nothing listens there


def _schedule(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tasker.cli.main", "schedule", *args],
                          cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=60)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    out = result.stdout + result.stderr
    assert "Traceback" not in out and "pw-secret" not in out, out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out
    return lines[0]


def test_unreachable_broker_is_one_line_and_exit_3() -> None:
    result = _schedule(env={"TASKER_BROKER_URL": f"redis://:pw-secret@127.0.0.1:{CLOSED}/0"})
    assert result.returncode == EXIT_BROKER
    assert _one_line(result).startswith("tasker schedule: broker unreachable")


def test_a_broker_without_a_store_says_so() -> None:
    result = _schedule("--json", env={"TASKER_BROKER_URL": "amqp://guest:pw-secret@127.0.0.1//"})
    assert result.returncode == EXIT_FAILED
    assert "not Redis" in _one_line(result)


def test_configured_entries_are_listed_before_beat_ever_ran(redis_client) -> None:
    # The test Redis db: no beat of this session wrote a tasker.schedule key.
    result = _schedule("--json")
    assert result.returncode == 0, result.stderr
    rows = {row["entry"]: row for row in json.loads(result.stdout)}
    assert {"tasker.sample_fleet", "tasker.recover_steps"} <= set(rows)
    row = rows["tasker.recover_steps"]
    assert row["configured"]
    assert row["period"] == float(os.environ.get("TASKER_RECOVERY_INTERVAL", 10))
    assert row["task"] == "tasker.recover_steps"
    table = _schedule()
    assert table.returncode == 0 and "beat schedule" in table.stdout, table.stderr
