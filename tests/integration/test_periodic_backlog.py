"""tasker's own periodic work never waits behind user work (issue 2.4, item 1).

A private Redis (tasker.cli.embedded_services) holds the backlog, so beat, the node and the
queue are this test's alone and LLEN is the queue's exact length.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from support import REPO, total, wait_for

from tasker.cli.embedded_services import EmbeddedRedis

INTERVAL = 2.0
TASKS = 3000


def _depth_and_stamp(node) -> tuple[float | None, float, float]:
    s = node.scrape()
    key = ("tasker_queue_depth", frozenset({("queue", "celery")}))
    return (s.get(key), total(s, "tasker_sample_timestamp_seconds", source="broker"),
            # The round stamps every source at its end: its start is this far back.
            total(s, "tasker_sample_duration_seconds"))


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_queue_depth_is_sampled_during_a_backlog(start_node, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        env = {"TASKER_BROKER_URL": url, "TASKER_SAMPLE_INTERVAL": str(int(INTERVAL)),
               "TASKER_RECOVERY_INTERVAL": str(int(INTERVAL))}
        node = start_node(queue="celery", env=env)
        client = redis.Redis.from_url(url)

        # LLEN of the queue read continuously, each read stamped before and after.
        reads: list[tuple[float, float, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                before = time.time()
                n = client.llen("celery")
                reads.append((before, time.time(), n))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        beat_log = open(tmp_path / "beat.log", "wb")  # noqa: SIM115 - the child writes it
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasker", "beat",
             "--schedule", str(tmp_path / "schedule")],
            cwd=REPO, env={**node.env, **env}, stdout=beat_log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            from celery import Celery

            publisher = Celery("publisher", broker=url)
            first_publish = time.time()
            with publisher.producer_or_acquire() as producer:
                for _ in range(TASKS):
                    publisher.send_task("diagnostics.sleep", args=(0.02,), queue="celery",
                                        producer=producer)
            # Every sample taken while the backlog lasts, as (stamp, duration, depth).
            samples: dict[float, tuple[float, float | None]] = {}
            deadline = time.time() + 180
            while time.time() < deadline:
                depth, stamp, duration = _depth_and_stamp(node)
                if stamp and stamp not in samples:
                    samples[stamp] = (duration, depth)
                if reads and reads[-1][2] == 0 and stamp > reads[-1][1] - 0.5 \
                        and any(t > first_publish and d == 0 for t, (_, d) in samples.items()):
                    break
                time.sleep(0.1)
            stop.set()
            watcher.join()
        finally:
            os.killpg(beat.pid, signal.SIGTERM)
            beat.wait(timeout=20)
            beat_log.close()

        drained_at = next(t for t, _, n in reads if t > first_publish + 1 and n == 0)
        during = sorted((t, d, v) for t, (d, v) in samples.items()
                        if first_publish < t <= drained_at + INTERVAL)
        beat_output = (tmp_path / "beat.log").read_text()
        assert during, f"no sample during the backlog; beat log:\n{beat_output}"
        # Present within three intervals of the first publish ...
        assert during[0][0] - first_publish <= 3 * INTERVAL, during[:3]
        # ... and after every interval until the queue drains (no gap of two intervals).
        stamps = [t for t, _, _ in during]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert drained_at - stamps[-1] <= 2 * INTERVAL or stamps[-1] >= drained_at
        assert max(gaps, default=0) <= 2 * INTERVAL, gaps
        for stamp, duration, depth in during:
            assert depth is not None, f"sample at {stamp} exported no depth"
            # LLEN read wholly before the round started and wholly after it ended
            # (a read in flight across the round's end may have been answered
            # before the sampler read the queue: once in three runs on a busy
            # machine it was one message higher than the round's depth).
            before = [n for _, t1, n in reads if t1 <= stamp - duration - 0.05]
            after = [n for t0, _, n in reads if t0 >= stamp]
            if not before or not after:
                continue
            low, high = sorted((before[-1], after[0]))
            assert low <= depth <= high, (stamp, depth, before[-1], after[0])
        # The sampler's messages were never revoked as expired behind the backlog.
        s = node.scrape()
        assert total(s, "tasker_tasks_revoked_total", task="tasker.sample_fleet") == 0
        assert total(s, "tasker_sample_skipped_total") == 0
        # The recovery poller ran in the pool during the backlog, none expired.
        span = drained_at - first_publish
        assert total(s, "tasker_tasks_succeeded_total", task="tasker.recover_steps") >= \
            span / INTERVAL - 3, span
        assert total(s, "tasker_tasks_revoked_total", task="tasker.recover_steps") == 0


@pytest.mark.timeout(120)
def test_sampler_runs_while_every_pool_process_is_busy(start_node, tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "redis") as server:
        url = f"redis://127.0.0.1:{server.port}/0"
        node = start_node(queue="celery", concurrency=1,
                          env={"TASKER_BROKER_URL": url, "TASKER_SAMPLE_INTERVAL": "30"})
        from celery import Celery

        publisher = Celery("publisher", broker=url)
        for _ in range(10):  # more than the node prefetches: some wait in the queue
            publisher.send_task("diagnostics.sleep", args=(60,), queue="celery")
        wait_for(lambda: total(node.scrape(), "tasker_worker_tasks_active") == 1, timeout=30,
                 message="the only pool process busy")
        from tasker.periodic import PERIODIC_QUEUE

        publisher.send_task("tasker.sample_fleet", queue=PERIODIC_QUEUE)  # where beat sends it
        s = wait_for(lambda: (lambda s: s if total(s, "tasker_sample_up", source="broker") == 1
                              else None)(node.scrape()), timeout=30, message="a sample")
        assert total(s, "tasker_worker_tasks_active") == 1  # the long task still runs
        assert s[("tasker_queue_depth", frozenset({("queue", "celery")}))] >= 1
        node.stop(timeout=1)
