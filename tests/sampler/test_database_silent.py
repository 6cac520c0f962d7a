"""A database that accepts TCP and never answers cannot stall the sampler."""

from __future__ import annotations

import threading
import time

import pytest
from silent_db import silent_server
from support import total, wait_for

from tasker.sampler.database import DatabaseSampleError, sample_database

#: Slack over a bound for thread start-up and a loaded 2-core machine.
SLACK = 1.0


def _bounded_call(fn, limit: float) -> tuple[float, BaseException | None]:
    """Run ``fn`` in a thread; (seconds, exception). Fails if it outlives ``limit``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit}s"
    return time.monotonic() - started, outcome[0]


@pytest.mark.parametrize("handshake", [False, True], ids=["silent", "mute-after-start-up"])
def test_sample_database_gives_up_at_its_timeout(handshake: bool) -> None:
    with silent_server(handshake) as port:
        url = f"postgresql://u:pw-silent@127.0.0.1:{port}/db"
        elapsed, exc = _bounded_call(lambda: sample_database(url, timeout=1.5), 1.5 + 8)
    assert isinstance(exc, DatabaseSampleError), exc
    assert elapsed < 1.5 + SLACK, elapsed
    assert "pw-silent" not in str(exc) and f"127.0.0.1:{port}" in str(exc)


@pytest.mark.parametrize("handshake", [False, True], ids=["silent", "mute-after-start-up"])
def test_a_round_ends_within_one_interval_and_the_broker_is_sampled(app, handshake) -> None:
    from tasker.settings import get_settings
    from tasker.tasks.fleet_sampler import run_sample_round

    interval = 2.0
    with silent_server(handshake) as port:
        settings = get_settings().__class__(
            broker_url=get_settings().broker_url, sample_interval=interval,
            database_url=f"postgresql://u:pw@127.0.0.1:{port}/db")
        elapsed, exc = _bounded_call(lambda: run_sample_round(app, settings), 60)
    assert exc is None, exc
    assert elapsed < interval + 0.5, elapsed
    # (The round itself is checked through a node below; here: it ended in time.)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_node_whose_database_never_answers_keeps_sampling_the_broker(start_node, app):
    interval = 2
    with silent_server(handshake=True) as port:
        node = start_node(env={"TASKER_SAMPLE_INTERVAL": str(interval),
                               "TASKER_DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{port}/db"})
        # What beat does, once per interval, for six intervals.
        for _ in range(6):
            app.send_task("tasker.sample_fleet", queue=node.queue)
            time.sleep(interval)
        wait_for(lambda: total(node.scrape(), "tasker_sample_up", source="database") == 0,
                 timeout=15, message="database reported down")
        s = node.scrape()
        assert total(s, "tasker_sample_up", source="broker") == 1
        broker_stamp = total(s, "tasker_sample_timestamp_seconds", source="broker")
        assert time.time() - broker_stamp < 2 * interval + SLACK, time.time() - broker_stamp
        # Every round ran (none waited behind a stuck one) and each ended within the interval.
        assert total(s, "tasker_sample_skipped_total", reason="overlap") == 0
        assert total(s, "tasker_sample_duration_seconds", source="database") < interval
        rounds = [e for e in node.log_events()
                  if e.get("event") == "sample.failed" and e.get("source") == "database"]
        assert len(rounds) >= 5, len(rounds)
