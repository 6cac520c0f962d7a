"""Fleet samples in a node's scrape: stored, aged out, exported.

A sample round runs in whichever pool process received the beat task; it
writes its result for each source into ``fleet.json`` in the node's directory
(replaced atomically, merged under an ``flock``). The MainProcess reads that
file at each scrape. Values are exported only while fresher than three sample
intervals and only when the source's last attempt worked (never a stale or
stand-in value); the ``tasker_sample_*`` series of a source stay exported once
the node has sampled it, so an alert can see a sampler that went quiet.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

__all__ = ["FleetExport", "record_source", "FLEET_FILE", "SOURCES", "STALE_AFTER_INTERVALS"]

FLEET_FILE = "fleet.json"
_LOCK_FILE = "fleet.lock"
SOURCES = ("broker", "database", "records")
#: A node stops exporting a fleet sample this many intervals after it was taken.
STALE_AFTER_INTERVALS = 3


@contextmanager
def _locked(directory: str) -> Iterator[None]:
    fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load(directory: str) -> dict[str, Any]:
    try:
        with open(os.path.join(directory, FLEET_FILE)) as f:
            doc = json.load(f)
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def record_source(directory: str, source: str, *, up: bool, duration: float,
                  values: dict[str, Any] | None, now: float | None = None) -> None:
    """Store the outcome of sampling one source.

    Args:
        directory: the node's multiprocess directory.
        source: ``broker``, ``database`` or ``records``.
        up: whether the sample worked.
        duration: seconds the sample took.
        values: the sampled values (ignored when ``up`` is false: a failed
            sample replaces nothing with a stand-in).
    """
    now = time.time() if now is None else now
    with _locked(directory):
        doc = _load(directory)
        entry = doc.get(source, {})
        entry.update({"up": bool(up), "duration": duration, "attempted_at": now})
        if up:
            entry["timestamp"] = now
            entry["values"] = values or {}
        doc[source] = entry
        tmp = os.path.join(directory, f"{FLEET_FILE}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, os.path.join(directory, FLEET_FILE))  # readers see old or new


class FleetExport:
    """The fleet series of one node's scrape and snapshot."""

    def __init__(self, directory: str, interval: float) -> None:
        self.directory = directory
        self.interval = interval

    def _fresh_values(self, entry: dict[str, Any], now: float) -> dict[str, Any] | None:
        if not entry.get("up") or "timestamp" not in entry:
            return None
        if now - entry["timestamp"] >= STALE_AFTER_INTERVALS * self.interval:
            return None
        return entry.get("values") or {}

    def families(self, now: float | None = None) -> list[Metric]:
        now = time.time() if now is None else now
        doc = _load(self.directory)
        up = GaugeMetricFamily("tasker_sample_up", "1 when the last sample of the source worked.",
                               labels=["source"])
        duration = GaugeMetricFamily("tasker_sample_duration_seconds",
                                     "Seconds the last sample of the source took.",
                                     labels=["source"])
        stamp = GaugeMetricFamily("tasker_sample_timestamp_seconds",
                                  "Unix time of the last successful sample of the source.",
                                  labels=["source"])
        for source in SOURCES:
            entry = doc.get(source)
            if not entry:
                continue
            up.add_metric([source], 1.0 if entry.get("up") else 0.0)
            duration.add_metric([source], float(entry.get("duration", 0.0)))
            if "timestamp" in entry:
                stamp.add_metric([source], float(entry["timestamp"]))
        families: list[Metric] = [up, duration, stamp]
        broker = self._fresh_values(doc.get("broker", {}), now)
        if broker is not None:
            families += _queue_families(broker.get("queues", {}))
        database = self._fresh_values(doc.get("database", {}), now)
        if database is not None:
            families += _database_families(database)
        records = self._fresh_values(doc.get("records", {}), now)
        if records is not None:
            families += _records_families(records)
        return families

    def queues_summary(self, now: float | None = None) -> dict[str, Any]:
        """``queues`` of the snapshot: fresh broker values per queue."""
        now = time.time() if now is None else now
        entry = _load(self.directory).get("broker", {})
        broker = self._fresh_values(entry, now)
        if broker is None:
            return {}
        sampled_at = datetime.fromtimestamp(entry["timestamp"], tz=timezone.utc).isoformat(
            timespec="seconds").replace("+00:00", "Z")
        return {
            name: {"depth": q.get("depth"),
                   "oldest_message_age_seconds": q.get("oldest_message_age_seconds"),
                   "unacked": q.get("unacked"), "consumers": q.get("consumers"),
                   "sampled_at": sampled_at}
            for name, q in sorted(broker.get("queues", {}).items())
        }


def _queue_families(queues: dict[str, dict[str, Any]]) -> list[Metric]:
    spec = [
        ("depth", "tasker_queue_depth", "Messages waiting, all priority levels."),
        ("oldest_message_age_seconds", "tasker_queue_oldest_message_age_seconds",
         "Age of the next message to be consumed."),
        ("unacked", "tasker_queue_unacked", "Delivered to a worker, not yet acknowledged."),
        ("consumers", "tasker_queue_consumers", "Consumers of the queue."),
    ]
    families = []
    for key, name, doc in spec:
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for queue, values in sorted(queues.items()):
            if values.get(key) is not None:  # unknown stays absent, never 0 or -1
                family.add_metric([queue], float(values[key]))
        families.append(family)
    return families


def _records_families(values: dict[str, Any]) -> list[Metric]:
    tasks = GaugeMetricFamily("tasker_records_tasks", "Recorded task requests by state.",
                              labels=["state"])
    for state, count in sorted((values.get("tasks") or {}).items()):
        tasks.add_metric([state], float(count))
    steps = GaugeMetricFamily("tasker_records_steps", "Recorded workflow steps by state.",
                              labels=["state"])
    for state, count in sorted((values.get("steps") or {}).items()):
        steps.add_metric([state], float(count))
    return [tasks, steps]


def _database_families(values: dict[str, Any]) -> list[Metric]:
    connections = GaugeMetricFamily("tasker_db_connections",
                                    "Server connections to the database by state.",
                                    labels=["state"])
    for state, count in sorted((values.get("connections_by_state") or {}).items()):
        connections.add_metric([state], float(count))
    families: list[Metric] = [connections]
    if values.get("max_connections") is not None:
        families.append(GaugeMetricFamily("tasker_db_max_connections",
                                          "The server's max_connections.",
                                          value=float(values["max_connections"])))
    return families
