"""Periodic-task monitoring: when each beat entry last started, how late, and its missed runs.

Follow one scheduled run through the code:

* beat's scheduler (:class:`MonitoredScheduler`, ``beat_scheduler`` in
  :mod:`tasker.celeryconfig`) stamps each message it sends with the entry's
  name, the time the run was due and the entry's period (headers
  :data:`ENTRY_HEADER`, :data:`DUE_HEADER`, :data:`PERIOD_HEADER`), and
  writes the entry's last due and next due time to the schedule store;
* the pool process that starts the task (``task_prerun``) records
  ``tasker_schedule_lateness_seconds`` (start minus due),
  ``tasker_schedule_last_start_timestamp_seconds`` and, through the store,
  the runs missed since the entry's previous start
  (``tasker_schedule_missed_total``, see :func:`missed_runs`);
* every node's MainProcess creates the series of each configured entry at
  zero when it is ready, so ``increase()`` sees a node's first missed run;
* ``tasker schedule`` reads the store.

What "missed" means: a due run of an entry that did not start within one
period of its due time. It either started later than due + period (a message
that waited in the queue while the worker was away), or never started at all
(its message expired or was lost, or beat was down when it was due). Both are
counted by the worker that starts a *later* run of the entry, at that start:
the count increases when the entry runs again, not while nothing runs. The
ongoing gap (nothing has started for two periods) is what the
``TaskerScheduleEntryMissed`` alert adds from the last start and the period.

The store is the broker's Redis (a hash per fleet, named after the periodic
queue). With another broker there is no store: lateness, last start and the
missed runs that started late are still recorded (they need only the
headers); runs that never started are not counted, and ``tasker schedule``
says the store is unavailable.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import beat
from celery.signals import task_prerun, worker_ready

from tasker.metrics import recording
from tasker.periodic_queue import periodic_queue_name
from tasker.settings import get_settings

__all__ = ["MonitoredScheduler", "ScheduleStore", "EntryState", "missed_runs",
           "period_seconds", "ENTRY_HEADER", "DUE_HEADER", "PERIOD_HEADER", "MAX_ENTRIES"]

logger = logging.getLogger("tasker.schedule")

#: Message headers beat adds to each scheduled message.
ENTRY_HEADER = "tasker_schedule_entry"
DUE_HEADER = "tasker_schedule_due"
PERIOD_HEADER = "tasker_schedule_period"
#: Distinct ``entry`` label values one process records; any further name is
#: ``other`` (a stamped message from elsewhere must not grow the series without end).
MAX_ENTRIES = 200
#: Seconds a store command may take: beat's tick and a task's start wait at most this.
STORE_TIMEOUT = 0.5


# --- pure parts ---------------------------------------------------------------

def period_seconds(schedule: Any, at: datetime | None = None) -> float | None:
    """The seconds between one run of ``schedule`` and the next, None if unknown.

    An interval (a number, a timedelta, ``celery.schedules.schedule``) has one
    period; a crontab's period is the one that follows ``at`` (default now).
    """
    if isinstance(schedule, (int, float)):
        return float(schedule)
    if isinstance(schedule, timedelta):
        return schedule.total_seconds()
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, timedelta):
        return run_every.total_seconds()
    try:
        # A crontab's next run after a given run, whatever the time now.
        start, delta, _now = schedule.remaining_delta(at or datetime.now(timezone.utc))
        first = start + delta
        start, delta, _now = schedule.remaining_delta(first)
        return max(((start + delta) - first).total_seconds(), 0.0) or None
    except Exception:  # noqa: BLE001 - an exotic schedule: its period is unknown
        return None


def missed_runs(due: float, started: float, period: float | None,
                previous_due: float | None) -> tuple[int, bool]:
    """The runs a start shows as missed, and whether the start is in order.

    Args:
        due: when the starting run was due (beat's stamp).
        started: when it started.
        period: the entry's period (seconds), None or 0 when unknown.
        previous_due: the due time of the entry's latest earlier start, None
            if none is known (the first start, or no store).

    A start whose due time is not after ``previous_due`` is out of order (a
    later run of the entry started first) or a redelivery: the runs between
    were already counted by that later start, so it counts nothing. Otherwise
    it counts the due times between the previous start's and its own (each
    never started: ``round(gap / period) - 1``) and itself when it started a
    period or more after it was due.
    """
    if not period or period <= 0:
        return 0, True
    if previous_due is not None and due <= previous_due:
        return 0, False
    missed = 0
    if previous_due is not None:
        missed += max(round((due - previous_due) / period) - 1, 0)
    if started - due >= period:
        missed += 1
    return missed, True


# --- the store ----------------------------------------------------------------

@dataclass(frozen=True)
class EntryState:
    """What the store knows of one entry (every time a Unix timestamp)."""

    entry: str
    task: str | None = None
    period: float | None = None
    last_due: float | None = None
    next_due: float | None = None
    last_start: float | None = None
    last_start_due: float | None = None
    lateness: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# Records a start only if its due time is later than the recorded one (starts
# of one entry on several nodes race); returns the due time it replaced.
_RECORD_START = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if (not prev) or tonumber(prev) < tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return prev
"""


class ScheduleStore:
    """Beat's schedule and the entries' last starts, in the broker's Redis.

    Keys (``<ns>`` is the fleet's periodic queue, so fleets sharing a Redis
    database keep apart): ``tasker.schedule:<ns>`` (entry -> JSON written by
    beat), ``tasker.schedule:<ns>:due`` (entry -> due time of the latest
    start) and ``tasker.schedule:<ns>:starts`` (entry -> JSON of that start).
    """

    def __init__(self, client: Any, namespace: str) -> None:
        self._client = client
        self.key = f"tasker.schedule:{namespace}"
        self._record = client.register_script(_RECORD_START)

    @classmethod
    def from_settings(cls, timeout: float = STORE_TIMEOUT) -> ScheduleStore | None:
        """The store of this fleet, or None when the broker is not a plain Redis URL."""
        settings = get_settings()
        url = settings.broker_url
        if not url.startswith(("redis://", "rediss://", "unix://")):
            return None
        # lazy: only with a Redis broker; redis costs 75 ms (python -X importtime).
        import redis

        client = redis.Redis.from_url(url, socket_timeout=timeout,
                                      socket_connect_timeout=timeout)
        return cls(client, periodic_queue_name(settings.step_queue))

    def publish_entry(self, entry: str, fields: Mapping[str, Any]) -> None:
        """Beat: one entry's task, period, last and next due time."""
        self._client.hset(self.key, entry, json.dumps(dict(fields), sort_keys=True))

    def record_start(self, entry: str, due: float, started: float,
                     lateness: float) -> float | None:
        """A run started; the due time of the entry's previous start (None if none)."""
        start = json.dumps({"started": started, "due": due, "lateness": lateness})
        prev = self._record(keys=[f"{self.key}:due", f"{self.key}:starts"],
                            args=[entry, repr(due), start])
        return float(prev) if prev is not None else None

    def entries(self) -> list[EntryState]:
        """Every entry beat published or a worker started, by name."""
        published = self._client.hgetall(self.key)
        starts = self._client.hgetall(f"{self.key}:starts")
        names = sorted({_text(n) for n in (*published, *starts)})
        out = []
        for name in names:
            pub = _loads(published.get(name.encode()))
            start = _loads(starts.get(name.encode()))
            out.append(EntryState(entry=name, task=pub.get("task"), period=pub.get("period"),
                                  last_due=pub.get("last_due"), next_due=pub.get("next_due"),
                                  last_start=start.get("started"),
                                  last_start_due=start.get("due"),
                                  lateness=start.get("lateness")))
        return out

    def close(self) -> None:
        self._client.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _loads(raw: bytes | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


_store_lock = threading.Lock()
_stores: dict[int, ScheduleStore | None] = {}  # per pid: a forked process makes its own
_warned: set[str] = set()  # once-per-process warnings (signal receivers get no handle)


def _store() -> ScheduleStore | None:
    pid = os.getpid()
    with _store_lock:
        if pid not in _stores:
            try:
                _stores[pid] = ScheduleStore.from_settings()
            except Exception as exc:  # noqa: BLE001 - no store: the headers still count
                _warn_once("store", exc)
                _stores[pid] = None
        return _stores[pid]


def _warn_once(what: str, exc: BaseException) -> None:
    # One warning per process and kind: a Redis that is down must not flood the log.
    if what not in _warned:
        _warned.add(what)
        logger.warning("schedule.store_failed", extra={"stage": what, "reason": str(exc)})


# --- beat ---------------------------------------------------------------------

class MonitoredScheduler(beat.Scheduler):
    """Celery's in-memory scheduler, stamping each message with its entry and due time.

    ``apply_entry`` receives the entry as it was before ``reserve``: its
    ``last_run_at`` is the previous run, so the run now sent was due at
    ``last_run_at`` plus what remained of the schedule then (negative once due).
    """

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True,
                    **kwargs: Any) -> Any:
        stamped = entry
        try:
            stamped, fields = _stamp(entry, time.time())
        except Exception as exc:  # noqa: BLE001 - monitoring must never stop a run
            _warn_once("stamp", exc)
            fields = None
        result = super().apply_async(stamped, producer, advance, **kwargs)
        if fields is not None:
            store = _store()
            try:
                if store is not None:
                    store.publish_entry(entry.name, fields)
            except Exception as exc:  # noqa: BLE001 - the run was sent; only the store failed
                _warn_once("publish", exc)
        return result


def _stamp(entry: Any, now: float) -> tuple[Any, dict[str, Any]]:
    """A copy of ``entry`` whose options carry the headers, and the fields for the store."""
    schedule = entry.schedule
    last = entry.last_run_at
    if last.tzinfo is None:
        last = last.replace(tzinfo=timezone.utc)
    due = now + schedule.remaining_estimate(last).total_seconds()
    due = min(due, now)  # beat sends a run once due; never stamp a start as early
    now_dt = datetime.fromtimestamp(now, timezone.utc)
    period = period_seconds(schedule, datetime.fromtimestamp(due, timezone.utc))
    next_due = now + schedule.remaining_estimate(now_dt).total_seconds()
    options = dict(entry.options or {})
    headers = dict(options.get("headers") or {})
    headers.update({ENTRY_HEADER: entry.name, DUE_HEADER: due, PERIOD_HEADER: period})
    options["headers"] = headers
    stamped = entry.__class__(**dict(entry, options=options))
    fields = {"task": entry.task, "period": period, "last_due": due, "next_due": next_due,
              "sent": now}
    return stamped, fields


# --- workers ------------------------------------------------------------------

def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


_entry_labels: set[str] = set()  # per process: the entries given zero series already


def _entry_label(name: str) -> str:
    if name in _entry_labels:
        return name
    if len(_entry_labels) < MAX_ENTRIES:
        _entry_labels.add(name)
        return name
    return "other"


def record_start(request: Any, started: float | None = None) -> int | None:
    """Record a stamped run's start; the missed runs it counted (None: not stamped).

    Called in the process that starts the task. Runs without a recorder (no
    metrics) still update the store, so ``tasker schedule`` stays right. A
    retry, and a redelivery of the entry's latest start, record nothing: each
    scheduled run is observed once.
    """
    entry = _header(request, ENTRY_HEADER)
    if not isinstance(entry, str):
        return None
    if getattr(request, "retries", 0):
        return None  # a retry of a run that started already: not a scheduled start
    try:
        due = float(_header(request, DUE_HEADER))
        raw_period = _header(request, PERIOD_HEADER)
        period = float(raw_period) if raw_period is not None else None
    except (TypeError, ValueError):
        return None
    if not math.isfinite(due):
        return None
    started = time.time() if started is None else started
    lateness = max(started - due, 0.0)  # clocks of beat and worker differ a little
    previous = None
    store = _store()
    if store is not None:
        try:
            previous = store.record_start(entry, due, started, lateness)
        except Exception as exc:  # noqa: BLE001 - count what the headers show
            _warn_once("record_start", exc)
    if previous is not None and due == previous:
        return 0  # a redelivery of the latest start (a lost worker): counted already
    missed, _in_order = missed_runs(due, started, period, previous)
    recorder = recording.current()
    if recorder is not None:
        m = recorder.metrics
        label = _entry_label(entry)
        recorder.child(m.schedule_lateness, label).observe(lateness)
        recorder.child(m.schedule_last_start, label).set(started)
        if period:
            recorder.child(m.schedule_period, label).set(period)
        counter = recorder.child(m.schedule_missed, label)
        if missed:
            counter.inc(missed)
    if missed:
        logger.warning("schedule.missed", extra={"entry": entry, "missed": missed,
                                                 "due": due, "lateness": round(lateness, 3)})
    return missed


@task_prerun.connect(weak=False)
def _on_prerun(sender: Any = None, task: Any = None, **_: Any) -> None:
    try:
        record_start((task or sender).request)
    except Exception as exc:  # noqa: BLE001 - a metrics failure never fails a task
        recorder = recording.current()
        if recorder is not None:
            recording._record_failed(recorder, "schedule", exc)


def configured_periods(beat_schedule: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Each configured entry's period (None when unknown)."""
    out: dict[str, float | None] = {}
    for name, spec in (beat_schedule or {}).items():
        schedule = spec.get("schedule") if isinstance(spec, Mapping) else None
        out[name] = period_seconds(schedule) if schedule is not None else None
    return out


@worker_ready.connect(weak=False)
def _create_series(sender: Any = None, **_: Any) -> None:
    """MainProcess: every configured entry's missed count and lateness at zero, and its period.

    Why: a counter whose first scrape already shows 4 has, for ``increase()``,
    never increased; created at zero when the node is ready, the first missed
    run after a restart is an increase. The period gauge lives as long as the
    node (the alert compares the last start with it).
    """
    recorder = recording.current()
    app = getattr(sender, "app", None)  # the consumer: Celery gives its app
    if recorder is None or app is None:
        return
    try:
        m = recorder.metrics
        for name, period in configured_periods(app.conf.beat_schedule).items():
            label = _entry_label(name)
            recorder.child(m.schedule_missed, label).inc(0)
            recorder.child(m.schedule_lateness, label)
            if period:
                recorder.child(m.schedule_period, label).set(period)
    except Exception as exc:  # noqa: BLE001 - never stop the node for its metrics
        recording._record_failed(recorder, "schedule", exc)
