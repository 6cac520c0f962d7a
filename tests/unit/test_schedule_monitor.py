"""Periodic-task monitoring: the missed-run arithmetic, beat's stamp, the store, recording."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest
from celery.beat import ScheduleEntry
from celery.schedules import crontab, schedule

from tasker import schedule_monitor as sm
from tasker.schedule_monitor import missed_runs, period_seconds

# --- missed_runs ---------------------------------------------------------------


def test_an_on_time_start_misses_nothing() -> None:
    assert missed_runs(100.0, 100.004, 2.0, 98.0) == (0, True)
    assert missed_runs(100.0, 101.9, 2.0, 98.0) == (0, True)  # late, but within its period


def test_a_start_a_period_late_is_a_missed_run() -> None:
    assert missed_runs(100.0, 102.0, 2.0, 98.0) == (1, True)


def test_due_times_between_two_starts_never_started() -> None:
    # Previous start due at 90; this one due at 102, on time: 92..100 (5) never started.
    assert missed_runs(102.0, 102.01, 2.0, 90.0) == (5, True)
    # Beat's interval drifts by its own lateness: a little more than 6 periods.
    assert missed_runs(102.3, 102.31, 2.0, 90.0) == (5, True)


def test_queued_messages_started_together_count_each_late_one_once() -> None:
    # The node was away; 5 runs due at 92..100 waited and all start at 103.
    previous, total = 90.0, 0
    for due in (92.0, 94.0, 96.0, 98.0, 100.0, 102.0):
        missed, in_order = missed_runs(due, 103.0, 2.0, previous)
        assert in_order
        previous, total = due, total + missed
    assert total == 5  # 92..100 started a period or more late; 102 on time


def test_a_start_out_of_order_counts_nothing() -> None:
    # 96 started first on another process and counted 94 (never started yet,
    # and by then already a period late); 94 then starts: nothing more.
    assert missed_runs(96.0, 97.0, 2.0, 92.0) == (1, True)
    assert missed_runs(94.0, 97.0, 2.0, 96.0) == (0, False)
    assert missed_runs(96.0, 97.0, 2.0, 96.0) == (0, False)  # a redelivery


def test_unknown_period_or_first_start() -> None:
    assert missed_runs(100.0, 500.0, None, 10.0) == (0, True)
    assert missed_runs(100.0, 100.1, 2.0, None) == (0, True)
    assert missed_runs(100.0, 103.0, 2.0, None) == (1, True)


# --- period_seconds ------------------------------------------------------------


def test_period_of_each_kind_of_schedule() -> None:
    assert period_seconds(15) == 15.0
    assert period_seconds(2.5) == 2.5
    assert period_seconds(timedelta(minutes=5)) == 300.0
    assert period_seconds(schedule(timedelta(seconds=10))) == 10.0
    at = datetime(2026, 3, 3, 12, 0, tzinfo=timezone.utc)
    assert period_seconds(crontab(minute=0, hour=3), at) == 86400.0
    assert period_seconds(crontab(minute="*/5"), at) == 300.0
    assert period_seconds(object()) is None


# --- beat's stamp --------------------------------------------------------------


def test_beat_stamps_the_due_time_of_the_run_it_sends(app: Any) -> None:
    now = time.time()
    last = datetime.fromtimestamp(now - 2.05, timezone.utc)
    options = {"expires": 2.0, "headers": {"x": "1"}}
    entry = ScheduleEntry(name="e", task="t", schedule=schedule(timedelta(seconds=2)),
                          last_run_at=last, options=options, app=app)
    stamped, fields = sm._stamp(entry, now)
    headers = stamped.options["headers"]
    assert headers["x"] == "1" and headers[sm.ENTRY_HEADER] == "e"
    assert headers[sm.DUE_HEADER] == pytest.approx(now - 0.05, abs=0.01)
    assert headers[sm.PERIOD_HEADER] == 2.0
    assert stamped.options["expires"] == 2.0 and stamped.last_run_at == last
    assert options == {"expires": 2.0, "headers": {"x": "1"}}  # the entry is not changed
    assert fields["next_due"] == pytest.approx(now + 2.0, abs=0.01)
    assert fields["task"] == "t" and fields["period"] == 2.0


# --- the store (the test Redis db) ------------------------------------------------


@pytest.fixture
def store(redis_client: Any) -> Any:
    found = sm.ScheduleStore(redis_client, f"test-{uuid.uuid4().hex[:8]}")
    yield found
    redis_client.delete(found.key, f"{found.key}:due", f"{found.key}:starts")


def test_the_store_keeps_the_latest_start_across_racing_starts(store: Any) -> None:
    assert store.record_start("e", 100.0, 100.01, 0.01) is None
    assert store.record_start("e", 104.0, 104.5, 0.5) == 100.0
    assert store.record_start("e", 102.0, 104.6, 2.6) == 104.0  # older: not recorded
    store.publish_entry("e", {"task": "t", "period": 2.0, "last_due": 106.0,
                              "next_due": 108.0})
    (state,) = store.entries()
    assert (state.entry, state.task, state.period) == ("e", "t", 2.0)
    assert (state.last_due, state.next_due) == (106.0, 108.0)
    assert (state.last_start, state.last_start_due, state.lateness) == (104.5, 104.0, 0.5)


# --- recording at start --------------------------------------------------------------


def _value(metric: Any, sample: str, **labels: str) -> float:
    for family in metric.collect():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, store: Any) -> Any:
    from tasker.metrics import recording
    from tasker.metrics.definitions import create_metrics

    metrics = create_metrics()
    found = SimpleNamespace(metrics=metrics, child=lambda metric, *labels: metric.labels(*labels))
    monkeypatch.setattr(recording, "_recorder", found)
    monkeypatch.setitem(sm._stores, os.getpid(), store)
    return found


def _request(entry: str, due: float, period: float = 2.0) -> Any:
    return SimpleNamespace(**{sm.ENTRY_HEADER: entry, sm.DUE_HEADER: due,
                              sm.PERIOD_HEADER: period})


def test_a_start_records_lateness_last_start_and_missed_runs(recorder: Any) -> None:
    m = recorder.metrics
    assert sm.record_start(_request("e", 100.0), started=100.03) == 0
    # Five dues never started (their messages expired), then one 2.5 s late.
    assert sm.record_start(_request("e", 112.0), started=114.5) == 6
    assert sm.record_start(SimpleNamespace(), started=115.0) is None  # not from beat
    retry = _request("e", 112.0)
    retry.retries = 1
    assert sm.record_start(retry, started=116.0) is None
    assert sm.record_start(_request("e", 112.0), started=117.0) == 0  # redelivered
    assert _value(m.schedule_missed, "tasker_schedule_missed_total", entry="e") == 6
    assert _value(m.schedule_last_start, "tasker_schedule_last_start_timestamp_seconds",
                  entry="e") == 114.5
    assert _value(m.schedule_period, "tasker_schedule_period_seconds", entry="e") == 2.0
    assert _value(m.schedule_lateness, "tasker_schedule_lateness_seconds_count",
                  entry="e") == 2
    assert _value(m.schedule_lateness, "tasker_schedule_lateness_seconds_bucket",
                  entry="e", le="0.1") == 1


def test_without_a_store_the_headers_still_count(recorder: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sm._stores, os.getpid(), None)
    assert sm.record_start(_request("f", 100.0), started=103.0) == 1
    assert sm.record_start(_request("f", 112.0), started=112.01) == 0  # gap unseen


def test_configured_periods_of_tasker_own_entries(app: Any) -> None:
    periods = sm.configured_periods(app.conf.beat_schedule)
    assert set(periods) == {"tasker.sample_fleet", "tasker.recover_steps"}
    assert all(p and p > 0 for p in periods.values())


def test_the_command_tells_a_silent_beat_from_runs_not_starting() -> None:
    from tasker.cli.schedule import entry_state

    row = {"period": 2.0, "last_due": 100.0, "next_due": 102.0, "last_start_due": 100.0}
    assert entry_state(row, 101.0) == "ok"
    assert entry_state(row, 103.9) == "ok"  # the run due at 102 may still start in time
    assert entry_state({**row, "last_due": 102.0, "next_due": 104.0}, 104.1) == "not started"
    assert entry_state(row, 104.1) == "beat silent"  # and beat sent nothing due at 102
    assert entry_state({**row, "last_start_due": None}, 100.5) == "never started"
    assert entry_state({"period": 2.0}, 102.5) == "unknown"
