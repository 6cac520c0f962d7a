"""Scrapes taken while a prefork node works flat out never see a counter go down.

A counter (or a histogram's count, sum or bucket) read lower than the scrape
before is a reset to Prometheus: ``rate()`` and ``increase()`` jump. Here
6,000 tasks arrive in a burst while two clients scrape ``/metrics`` back to
back; every pair of consecutive scrapes of each client is compared.
"""

from __future__ import annotations

import threading
import time

import pytest
from support import Samples, parse_metrics, total, wait_for

NOOPS, FAILS = 5400, 600
#: Monotonic samples: counters, and every part of a histogram.
MONOTONIC_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def _monotonic(samples: Samples) -> dict[tuple[str, frozenset], float]:
    return {key: value for key, value in samples.items()
            if key[0].startswith("tasker_") and key[0].endswith(MONOTONIC_SUFFIXES)
            and not key[0].startswith(("tasker_sample_", "tasker_queue_", "tasker_db_conn"))}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_no_counter_goes_down_between_scrapes_under_a_burst(start_node, app):
    node = start_node()
    stop = threading.Event()
    scrapes: list[int] = [0, 0]
    falls: list[str] = []

    def scrape_until_stopped(index: int) -> None:
        from support import http_get

        previous: dict[tuple[str, frozenset], float] = {}
        while not stop.is_set():
            status, _, body = http_get(f"{node.url}/metrics", timeout=10)
            assert status == 200
            current = _monotonic(parse_metrics(body.decode()))
            for key, value in current.items():
                before = previous.get(key)
                if before is not None and value < before and len(falls) < 20:
                    falls.append(f"{key[0]}{dict(key[1])}: {before} -> {value}")
            previous.update(current)
            scrapes[index] += 1

    threads = [threading.Thread(target=scrape_until_stopped, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        with app.producer_or_acquire() as producer:
            for i in range(NOOPS + FAILS):
                task = "diagnostics.fail" if i % 10 == 9 else "diagnostics.noop"
                app.send_task(task, queue=node.queue, producer=producer)
        wait_for(lambda: total(node.scrape(), "tasker_tasks_started_total",
                               queue=node.queue) >= NOOPS + FAILS,
                 timeout=180, interval=0.5, message="every task started")
        wait_for(lambda: total(node.scrape(), "tasker_task_runtime_seconds_count",
                               queue=node.queue) >= NOOPS + FAILS,
                 timeout=30, interval=0.5, message="every task finished")
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert min(scrapes) >= 20, scrapes  # both clients really scraped throughout
    assert not falls, falls
    final = node.scrape()
    assert total(final, "tasker_tasks_received_total", queue=node.queue) == NOOPS + FAILS
    assert total(final, "tasker_tasks_started_total", queue=node.queue) == NOOPS + FAILS
    assert total(final, "tasker_tasks_succeeded_total", queue=node.queue) == NOOPS
    assert total(final, "tasker_tasks_failed_total", queue=node.queue) == FAILS
    assert total(final, "tasker_task_runtime_seconds_count", queue=node.queue) == NOOPS + FAILS
