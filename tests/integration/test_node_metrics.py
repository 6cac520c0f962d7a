"""Node-level numbers under real load: rate window, EMA, lost processes, recycling."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from support import busy_child as _busy_child
from support import exited as _exited
from support import http_get, total, wait_for


def _pace(app, queue: str, rate: float, seconds: float, task: str = "diagnostics.noop",
          args: tuple = ()) -> int:
    started = time.monotonic()
    n = int(rate * seconds)
    with app.producer_or_acquire() as producer:
        for i in range(n):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            app.send_task(task, args=args, queue=queue, producer=producer)
    return n


def test_processing_rate_follows_load_and_falls_to_zero(start_node, app):
    window = 5
    node = start_node(env={"TASKER_RATE_WINDOW": str(window)})
    _pace(app, node.queue, rate=20, seconds=2 * window)
    rate = node.snapshot()["processing_rate"]
    assert 16 <= rate <= 24, rate
    gauge = total(node.scrape(), "tasker_worker_processing_rate")
    assert 16 <= gauge <= 24, gauge
    time.sleep(window + 0.5)
    assert node.snapshot()["processing_rate"] < 1


def test_processing_rate_is_the_true_rate_over_the_true_window(start_node, app, redis_client):
    """A paced 20/s load: every reading, in the first window too, is within 2 % of the tasks
    that really finished in the window before it (their own finishing times, from the tasks).
    In the first window that is the tasks since the start over the whole window (the help
    text: finished per second over the last TASKER_RATE_WINDOW seconds), not over uptime."""
    window = 10
    node = start_node(env={"TASKER_RATE_WINDOW": str(window)})
    key = f"{node.queue}-stamps"
    publisher = threading.Thread(target=_pace, args=(app, node.queue, 20, 2 * window + 3),
                                 kwargs={"task": "diagnostics.stamp", "args": (key,)})
    publisher.start()
    readings: list[tuple[float, float, float]] = []
    try:
        time.sleep(3)
        while publisher.is_alive() and len(readings) < 16:
            before = time.time()
            rate = total(node.scrape(), "tasker_worker_processing_rate")
            readings.append((before, time.time(), rate))
            time.sleep(0.9)
    finally:
        publisher.join()
        stamps = sorted(float(s) for s in redis_client.lrange(key, 0, -1))
        redis_client.delete(key)
    assert len(readings) >= 10
    for before, after, rate in readings:
        # The node read its clock between before and after: the true count lies between
        # the stamps surely inside the window and those that may be.
        surely = sum(1 for s in stamps if after - window < s <= before)
        maybe = sum(1 for s in stamps if before - window < s <= after)
        assert surely / window * 0.98 <= rate <= maybe / window * 1.02, (rate, surely, maybe)


def test_latency_ema_tracks_runtime(start_node, app):
    node = start_node(env={"TASKER_EMA_ALPHA": "0.1"})
    for _ in range(30):
        app.send_task("diagnostics.sleep", args=(0.05,), queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 30, timeout=60, message="30 runs")
    ema = node.snapshot()["average_latency_ms"]
    assert 45 <= ema <= 65, ema
    for _ in range(40):
        app.send_task("diagnostics.sleep", args=(0.2,), queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 70, timeout=60, message="70 runs")
    snap = node.snapshot()
    assert snap["average_latency_ms"] > 150, snap
    ema_gauge = total(node.scrape(), "tasker_worker_latency_ema_seconds")
    assert abs(ema_gauge * 1000 - snap["average_latency_ms"]) < 1


def _counters(samples) -> dict:
    return {k: v for k, v in samples.items()
            if k[0].endswith("_total") or k[0].endswith("_count") or k[0].endswith("_bucket")}


def test_sigkill_of_a_pool_process_while_it_runs_a_task(start_node, app):
    node = start_node()
    for _ in range(5):
        app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 5, timeout=30, message="5 runs")
    app.send_task("diagnostics.sleep", args=(30,), queue=node.queue)
    wait_for(lambda: total(node.scrape(), "tasker_worker_tasks_active") == 1, timeout=30,
             message="sleep(30) running")
    before = node.scrape()
    assert total(before, "tasker_worker_pool_busy_processes") == 1

    # Find the pool process running the sleep: the one busy in /proc terms is
    # not knowable from outside, so use the per-process gauge files' owners.
    busy_pid = _busy_child(node)
    os.kill(busy_pid, signal.SIGKILL)
    wait_for(lambda: _exited(busy_pid), timeout=10, message="the killed process to exit")

    after = node.scrape()  # the very next scrape
    assert total(after, "tasker_worker_tasks_active") == 0
    assert total(after, "tasker_worker_pool_busy_processes") == 0

    def lost_counted():
        s = node.scrape()
        return (total(s, "tasker_worker_process_exits_total", reason="lost") == 1 and
                total(s, "tasker_tasks_failed_total", exception="WorkerLostError") == 1 and s)
    final = wait_for(lost_counted, timeout=30, message="lost exit and WorkerLostError counted")
    for key, value in _counters(before).items():
        assert final.get(key, 0) >= value, f"{key} went down: {value} -> {final.get(key)}"
    # The lost task's runtime was observed by the MainProcess.
    assert total(final, "tasker_task_runtime_seconds_count", task="diagnostics.sleep") == 1
    # The pool replaced the process and the node keeps working.
    app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["succeeded"] == 6, timeout=30, message="node still works")
    assert node.snapshot()["pool_processes"] == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_recycling_every_task_keeps_files_bounded_and_totals_exact(start_node, app):
    # Celery replaces recycled processes one at a time, each after a full
    # gc.collect(): about 20 a second once tasker has frozen the startup heap
    # (5-7 before, bare Celery too; see tasker/worker_process.py).
    node = start_node(concurrency=4, extra_args=["--max-tasks-per-child=1"])
    directory = node.directory()

    def scrape_seconds() -> float:
        started = time.perf_counter()
        status, _, _ = http_get(f"{node.url}/metrics")
        assert status == 200
        return time.perf_counter() - started

    for _ in range(20):
        app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 20, timeout=60, message="20 runs")
    start_scrape = min(scrape_seconds() for _ in range(5))

    n = int(os.environ.get("TASKER_TEST_RECYCLED_TASKS", "2000"))
    with app.producer_or_acquire() as producer:
        for _ in range(n - 20):
            app.send_task("diagnostics.noop", queue=node.queue, producer=producer)
    max_files = 0

    def finished() -> bool:
        nonlocal max_files
        max_files = max(max_files, len(list(directory.glob("*.db"))))
        return node.snapshot()["total_runs"] == n
    wait_for(finished, timeout=840, interval=0.5, message=f"{n} runs with recycling")
    time.sleep(2)  # one housekeeping sweep after the last exit
    s = node.scrape()
    assert total(s, "tasker_tasks_succeeded_total") == n
    assert total(s, "tasker_tasks_started_total") == n
    assert total(s, "tasker_task_runtime_seconds_count") == n
    assert total(s, "tasker_worker_process_exits_total", reason="recycled") >= n - 2
    # Bound: (main + 4 pool processes) x (counter, histogram, gauge, native
    # histogram) files, plus the files of processes that exited since the last
    # 1-second sweep.
    files_now = len(list(directory.glob("*.db")))
    assert files_now <= 5 * 4, sorted(p.name for p in directory.glob("*.db"))
    assert max_files <= 5 * 4 + 4 * 20, max_files
    end_scrape = min(scrape_seconds() for _ in range(5))
    assert end_scrape <= 2 * start_scrape + 0.005, (start_scrape, end_scrape)


def test_empty_db_file_does_not_break_the_scrape(start_node, app):
    node = start_node()
    for _ in range(7):
        app.send_task("diagnostics.noop", queue=node.queue)
    wait_for(lambda: node.snapshot()["total_runs"] == 7, timeout=30, message="7 runs")
    (node.directory() / "counter_999999999-1.db").write_bytes(b"")
    (node.directory() / "histogram_junk.db").write_bytes(b"\x00" * 3)
    status, _, body = http_get(f"{node.url}/metrics")
    assert status == 200
    from support import parse_metrics

    assert total(parse_metrics(body.decode()), "tasker_tasks_succeeded_total") == 7


def test_two_nodes_on_one_host_report_only_their_own_tasks(start_node, app):
    a = start_node()
    b = start_node()
    assert a.directory() != b.directory()
    for _ in range(11):
        app.send_task("diagnostics.noop", queue=a.queue)
    for _ in range(4):
        app.send_task("diagnostics.noop", queue=b.queue)
    wait_for(lambda: a.snapshot()["total_runs"] == 11, timeout=30, message="a: 11 runs")
    wait_for(lambda: b.snapshot()["total_runs"] == 4, timeout=30, message="b: 4 runs")
    assert total(a.scrape(), "tasker_tasks_received_total") == 11
    assert total(b.scrape(), "tasker_tasks_received_total") == 4


def test_configured_directory_cannot_be_shared_by_two_live_nodes(start_node, tmp_path):
    shared = tmp_path / "metrics"
    first = start_node(env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    assert first.directory() == shared
    second = start_node(env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}, wait=False)
    second.proc.wait(timeout=60)
    assert second.proc.returncode != 0
    assert "in use by another live worker node" in second.log()


def test_warm_shutdown_removes_the_default_directory(start_node):
    node = start_node()
    directory = node.directory()
    assert directory.is_dir()
    node.stop()
    assert not directory.exists()


def test_a_task_killed_at_the_hard_time_limit_is_counted_and_observed_once(start_node, app):
    node = start_node(extra_args=["--time-limit", "2"])
    app.send_task("diagnostics.sleep", args=(15,), queue=node.queue)
    wait_for(lambda: total(node.scrape(), "tasker_tasks_failed_total",
                           task="diagnostics.sleep") >= 1, timeout=30, message="the failure")
    # Whatever else reports the killed process (its replacement, the lost-process path)
    # has had time to land.
    wait_for(lambda: total(node.scrape(), "tasker_worker_process_exits_total") >= 1,
             timeout=15, message="the killed process's exit")
    time.sleep(2)
    samples = node.scrape()
    failures = [(dict(labels), value) for (name, labels), value in samples.items()
                if name == "tasker_tasks_failed_total" and value]
    assert len(failures) == 1, failures
    assert total(samples, "tasker_tasks_failed_total", task="diagnostics.sleep",
                 exception="TimeLimitExceeded") == 1
    assert total(samples, "tasker_task_runtime_seconds_count", task="diagnostics.sleep") == 1
    runtime = total(samples, "tasker_task_runtime_seconds_sum", task="diagnostics.sleep")
    assert 1.5 <= runtime <= 10, runtime
    assert node.snapshot()["total_runs"] == 1
