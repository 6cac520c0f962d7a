"""Storm: 200 requests, 20 SIGKILLed pool processes and a Redis restart; nothing lost or doubled.

The broker is a private Redis (``tasker.cli.embedded_services``) because the test restarts
it; Redis keeps nothing on disk, so every message waiting at the restart is
lost and only the recovery poller brings those steps back.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from support import REPO, SESSION, exited, wait_for
from workflow_support import (
    SHAPES,
    Poller,
    assert_complete_with_answers,
    assert_no_step_applied_twice,
    open_work_mismatch,
    task_records,
)

from tasker.cli.embedded_services import EmbeddedRedis

_SUBMIT = """
import json, random, sys
from tasker.workflows.engine import submit
shapes, count, seed = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
out = []
for i in range(count):
    workflow, n = shapes[i % len(shapes)], rng.randint(-50, 50)
    out.append([submit(workflow, {"n": n}).task_uuid, workflow, n])
print(json.dumps(out))
"""


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _submit(env: dict[str, str], count: int, seed: int) -> list[tuple[str, str, int]]:
    """Submit through the private broker, from a process configured for it."""
    done = subprocess.run([sys.executable, "-c", _SUBMIT, json.dumps(SHAPES), str(count),
                           str(seed)], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_storm_of_kills_and_a_redis_restart(start_node, private_redis: EmbeddedRedis,
                                            database_url, tmp_path: Path) -> None:
    queue = f"{SESSION}-storm-{os.getpid()}"
    env = {"TASKER_BROKER_URL": private_redis.url, "TASKER_STEP_QUEUE": queue,
           "TASKER_RECOVERY_DEADLINE": "3", "TASKER_RECOVERY_INTERVAL": "1"}
    node = start_node(queue=queue, concurrency=4, env=env)
    rng = random.Random(2026)
    kills = 0
    with Poller(None, queue, broker_url=private_redis.url):
        submitted = _submit(env, 100, seed=1)
        uuids = [u for u, _, _ in submitted]
        # Kill pool processes while steps run; restart Redis half-way.
        deadline = time.monotonic() + 120
        while kills < 20 and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.5))
            children = node.child_pids()
            if not children:
                continue
            victim = rng.choice(children)
            try:
                os.kill(victim, 9)
                kills += 1
            except ProcessLookupError:
                continue
            wait_for(lambda v=victim: exited(v), timeout=10, message="victim gone")
            if kills == 10:
                private_redis.stop()
                time.sleep(1.0)
                private_redis.start()
                submitted += _submit(env, 100, seed=2)  # the rest, after the restart
                uuids = [u for u, _, _ in submitted]
        assert kills == 20
        wait_for(lambda: all(t[1] in ("complete", "error")
                             for t in task_records(database_url, uuids).values()),
                 timeout=180, interval=1.0, message="every request terminal")
    assert len(submitted) == 200
    assert node.proc is not None and node.proc.poll() is None
    assert_complete_with_answers(database_url, submitted)
    assert_no_step_applied_twice(database_url, uuids)
    with psycopg.connect(database_url) as conn:
        steps, ledger, attempts, over = conn.execute(
            "SELECT (SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT count(*) FROM tasker_workflow_ledger WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT sum(attempts) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])),"
            " (SELECT count(*) FROM tasker_steps WHERE task_uuid = ANY(%s::uuid[])"
            "  AND attempts > max_attempts)", [uuids] * 4).fetchone()
    assert steps == ledger  # every step's effects exactly once
    assert over == 0
    # Killed attempts are counted: at most one extra attempt per kill.
    assert steps <= attempts <= steps + kills
    assert open_work_mismatch(database_url) == []
