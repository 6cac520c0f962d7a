"""The MainProcess's received count: kept in memory, folded into the counter before reads."""

from __future__ import annotations

import threading
import time
import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector


@pytest.fixture
def recorder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from prometheus_client import values

    from tasker.metrics import recording
    from tasker.metrics import values as tasker_values
    from tasker.metrics.definitions import create_metrics
    from tasker.metrics.mmap_files import AllocatedMmapedDict
    from tasker.metrics.node_state import NodeState

    monkeypatch.setattr(values, "ValueClass", values.ValueClass)  # restored afterwards
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    values.ValueClass = tasker_values.multiprocess_value_class(lambda: "1000-1",
                                                               AllocatedMmapedDict)
    state = NodeState.create(str(tmp_path / "node_state.bin"), 60, 0.1, time.time())
    return recording.Recorder(create_metrics(), state, "w@h",
                              known_tasks=lambda: {"a": None, "b": None},
                              queue_names=lambda exchange, key: key or "q",
                              directory=str(tmp_path))


def _received_in_files(directory: Path) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(directory))
    return {(s.labels["task"], s.labels["queue"]): s.value
            for family in registry.collect() if family.name == "tasker_tasks_received"
            for s in family.samples if s.name == "tasker_tasks_received_total"}


def _request(name: str, queue: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(name=name, delivery_info={"exchange": "", "routing_key": queue})


def test_counts_reach_the_files_at_the_flush_not_before(recorder, tmp_path: Path) -> None:
    for _ in range(3):
        recorder.on_received(_request("a", "q1"))
    recorder.on_received(_request("b", "q2"))
    recorder.on_received(_request("nope", "q2"))  # an unknown name: the bounded label
    assert sum(_received_in_files(tmp_path).values()) == 0  # still in memory
    recorder.flush_received()
    assert _received_in_files(tmp_path) == {("a", "q1"): 3, ("b", "q2"): 1,
                                            ("unregistered", "q2"): 1}
    recorder.flush_received()  # nothing new: nothing added twice
    recorder.on_received(_request("a", "q1"))
    recorder.flush_received()
    assert _received_in_files(tmp_path)[("a", "q1")] == 4


def test_flushing_from_another_thread_loses_and_doubles_nothing(recorder, tmp_path: Path) -> None:
    """The receiver (the event loop) and a flush (scrape thread, housekeeping) race."""
    stop = threading.Event()

    def flush_all_the_time() -> None:
        while not stop.is_set():
            recorder.flush_received()

    flusher = threading.Thread(target=flush_all_the_time)
    flusher.start()
    try:
        for i in range(30_000):
            # New keys appear while the flush iterates over them.
            recorder.on_received(_request("a", f"q{i % 300}"))
    finally:
        stop.set()
        flusher.join()
    recorder.flush_received()
    counts = _received_in_files(tmp_path)
    assert len(counts) == 300
    assert set(counts.values()) == {100}


def test_a_count_taken_back_after_it_was_written_is_made_up_by_the_next(
        recorder, tmp_path: Path) -> None:
    """tasker.receipt counts before Celery's handler and takes the count back when Celery
    refuses the message; a flush in between must not make the counter go down."""
    entry = recorder.received_entry("a", {"exchange": "", "routing_key": "q1"})
    entry.counted += 1
    recorder.flush_received()  # written: 1
    entry.counted -= 1  # Celery refused it after all
    recorder.flush_received()  # nothing written: a counter never goes down
    assert _received_in_files(tmp_path)[("a", "q1")] == 1
    entry.counted += 1  # the next message
    recorder.flush_received()
    assert _received_in_files(tmp_path)[("a", "q1")] == 1  # exact again
    entry.counted += 1
    recorder.flush_received()
    assert _received_in_files(tmp_path)[("a", "q1")] == 2
