"""MetricStore: merging and compacting a node's multiprocess files.

Several processes are simulated inside this one, as prometheus_client's own
multiprocess tests do: each "process" gets its own ``MultiProcessValue`` class
with an injected identifier, and liveness is injected into the store.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.values import MultiProcessValue

from tasker.metrics.store import MetricStore, StoreReading

BUCKETS = (0.1, 1.0, 10.0)
P1, P2, P3 = "1001-11", "1002-12", "1003-13"


@dataclass
class ProcMetrics:
    """The metric objects of one simulated process."""

    tasks: Counter
    runtime: Histogram
    active: Gauge  # livesum
    memory: Gauge  # liveall
    peak: Gauge  # livemax
    low: Gauge  # livemin


class Fleet:
    """Simulated worker processes writing into one multiprocess directory."""

    def __init__(self, directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.directory = str(directory)
        self.live: set[str] = set()
        self._monkeypatch = monkeypatch
        self._classes: dict[str, Any] = {}
        self._metrics: dict[str, ProcMetrics] = {}
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", self.directory)

    def __call__(self, ident: str) -> ProcMetrics:
        """Act as process ``ident``: use the result at once (children are created lazily)."""
        if ident not in self._classes:
            self._classes[ident] = MultiProcessValue(process_identifier=lambda: ident)
            self.live.add(ident)
        self._monkeypatch.setattr(values, "ValueClass", self._classes[ident])
        if ident not in self._metrics:
            self._metrics[ident] = ProcMetrics(
                tasks=Counter("tt_tasks", "Tasks finished.", ["task", "queue"], registry=None),
                runtime=Histogram("tt_runtime_seconds", "Task runtime.", ["task"],
                                  buckets=BUCKETS, registry=None),
                active=Gauge("tt_active", "Executing now.", multiprocess_mode="livesum",
                             registry=None),
                memory=Gauge("tt_memory_bytes", "Resident memory.", multiprocess_mode="liveall",
                             registry=None),
                peak=Gauge("tt_peak", "Highest.", multiprocess_mode="livemax", registry=None),
                low=Gauge("tt_low", "Lowest.", multiprocess_mode="livemin", registry=None),
            )
        return self._metrics[ident]

    def kill(self, ident: str) -> None:
        """The process exits: its files stay behind, it no longer runs."""
        self._classes[ident].close_all_files()
        self.live.discard(ident)

    def is_alive(self, owner: str) -> bool:
        return owner in self.live

    def store(self) -> MetricStore:
        return MetricStore(self.directory, is_alive=self.is_alive)

    def files(self) -> set[str]:
        return {name for name in os.listdir(self.directory) if name.endswith(".db")}

    def close(self) -> None:
        for cls in self._classes.values():
            cls.close_all_files()


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory, on tmpfs when there is one (as multiprocess dirs often are):
    creating a thousand files on a busy disk takes seconds."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        directory = Path(tempfile.mkdtemp(prefix="tasker-test-store-", dir=shm))
        yield directory
        shutil.rmtree(directory, ignore_errors=True)
    else:
        directory = tmp_path / "metrics"
        directory.mkdir()
        yield directory


@pytest.fixture
def fleet(metrics_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    f = Fleet(metrics_dir, monkeypatch)
    yield f
    f.close()


def work(fleet: Fleet) -> None:
    """Three processes with overlapping and distinct label values."""
    fleet(P1).tasks.labels(task="a", queue="q1").inc(3)
    fleet(P1).tasks.labels(task="b", queue="q1").inc(1)
    fleet(P1).runtime.labels(task="a").observe(0.05)
    fleet(P1).runtime.labels(task="a").observe(0.5)
    fleet(P1).active.set(1)
    fleet(P1).memory.set(100)
    fleet(P1).peak.set(5)
    fleet(P1).low.set(2)

    fleet(P2).tasks.labels(task="a", queue="q1").inc(5)
    fleet(P2).tasks.labels(task="a", queue="q2").inc(7)
    fleet(P2).runtime.labels(task="a").observe(2.0)
    fleet(P2).runtime.labels(task="b").observe(20.0)
    fleet(P2).active.set(2)
    fleet(P2).memory.set(200)
    fleet(P2).peak.set(9)
    fleet(P2).low.set(1)

    fleet(P3).tasks.labels(task="b", queue="q2").inc(11)
    fleet(P3).runtime.labels(task="a").observe(0.05)
    fleet(P3).active.set(0)
    fleet(P3).memory.set(300)
    fleet(P3).peak.set(4)
    fleet(P3).low.set(3)


class _ReadingCollector:
    def __init__(self, reading: StoreReading) -> None:
        self.reading = reading

    def collect(self) -> Any:
        return self.reading.families()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(registry: CollectorRegistry) -> tuple[Samples, dict[str, tuple[str, str]]]:
    """Parsed exposition: samples by (name, labels), and (type, help) by family."""
    samples: Samples = {}
    families: dict[str, tuple[str, str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        families[family.name] = (family.type, family.documentation)
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = s.value
    return samples, families


def exposition_of(reading: StoreReading) -> tuple[Samples, dict[str, tuple[str, str]]]:
    registry = CollectorRegistry()
    registry.register(_ReadingCollector(reading))
    return parse(registry)


def stock_exposition(directory: str) -> tuple[Samples, dict[str, tuple[str, str]]]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return parse(registry)


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (name, frozenset(labels.items()))


# -- merging --------------------------------------------------------------


def test_totals_are_sums_over_processes(fleet: Fleet) -> None:
    work(fleet)
    reading = fleet.store().read()
    assert reading.sum_of("tt_tasks_total") == 3 + 1 + 5 + 7 + 11
    assert reading.sum_of("tt_tasks_total", task="a", queue="q1") == 8
    assert reading.sum_of("tt_tasks_total", task="a") == 15
    assert reading.sum_of("tt_tasks_total", queue="q2") == 18
    # Histogram buckets as written (not cumulative) and sums, over processes.
    assert reading.sum_of("tt_runtime_seconds_sum", task="a") == pytest.approx(2.6)
    assert reading.sum_of("tt_runtime_seconds_bucket", task="a", le="0.1") == 2
    assert reading.sum_of("tt_runtime_seconds_bucket", task="a", le="1.0") == 1
    assert reading.sum_of("tt_runtime_seconds_bucket", task="a", le="10.0") == 1
    assert reading.sum_of("tt_runtime_seconds_bucket", task="a", le="+Inf") == 0
    assert reading.sum_of("tt_runtime_seconds_bucket", task="b", le="+Inf") == 1
    # Live gauges by their mode.
    assert reading.sum_of("tt_active") == 3
    assert reading.sum_of("tt_peak") == 9
    assert reading.sum_of("tt_low") == 1


def test_exposition_equals_the_stock_multiprocess_collector(fleet: Fleet) -> None:
    work(fleet)
    ours, our_families = exposition_of(fleet.store().read())
    stock, stock_families = stock_exposition(fleet.directory)
    assert ours == pytest.approx(stock)
    assert our_families == stock_families
    # Spot checks, so that an equal-but-empty exposition cannot pass.
    assert ours[key("tt_tasks_total", task="a", queue="q1")] == 8
    assert ours[key("tt_runtime_seconds_bucket", task="a", le="0.1")] == 2
    assert ours[key("tt_runtime_seconds_bucket", task="a", le="1.0")] == 3  # cumulative
    assert ours[key("tt_runtime_seconds_bucket", task="a", le="+Inf")] == 4
    assert ours[key("tt_runtime_seconds_count", task="a")] == 4
    assert ours[key("tt_runtime_seconds_sum", task="a")] == pytest.approx(2.6)
    assert ours[key("tt_active")] == 3
    assert ours[key("tt_memory_bytes", pid=P2)] == 200
    assert our_families["tt_tasks"] == ("counter", "Tasks finished.")
    assert our_families["tt_runtime_seconds"][0] == "histogram"


def test_a_file_appended_to_after_a_read_is_picked_up(fleet: Fleet) -> None:
    fleet(P1).tasks.labels(task="a", queue="q1").inc(2)
    store = fleet.store()
    assert store.read().sum_of("tt_tasks_total") == 2
    # New label values append entries to the same file; old ones change in place.
    fleet(P1).tasks.labels(task="new", queue="q9").inc(4)
    fleet(P1).tasks.labels(task="a", queue="q1").inc(1)
    fleet(P1).runtime.labels(task="new").observe(0.5)
    reading = store.read()
    assert reading.sum_of("tt_tasks_total", task="new", queue="q9") == 4
    assert reading.sum_of("tt_tasks_total", task="a") == 3
    assert reading.sum_of("tt_runtime_seconds_bucket", task="new", le="1.0") == 1
    # And many more, enough to make the file grow past its first mapping.
    for i in range(1500):
        fleet(P1).tasks.labels(task=f"t{i}", queue="q").inc()
    reading = store.read()
    assert reading.sum_of("tt_tasks_total") == 3 + 4 + 1500
    assert len(reading.by_label("tt_tasks_total", "task")) == 2 + 1500
    assert exposition_of(reading)[0] == pytest.approx(stock_exposition(fleet.directory)[0])


# -- dead processes -------------------------------------------------------


def test_a_dead_process_keeps_its_counts_and_loses_its_gauges(fleet: Fleet) -> None:
    work(fleet)
    store = fleet.store()
    before = store.read()
    before_exposition = exposition_of(before)[0]
    assert {f for f in fleet.files() if P2 in f} == {
        f"counter_{P2}.db", f"histogram_{P2}.db", f"gauge_livesum_{P2}.db",
        f"gauge_liveall_{P2}.db", f"gauge_livemax_{P2}.db", f"gauge_livemin_{P2}.db"}

    fleet.kill(P2)
    after = store.read()
    assert not any(P2 in f for f in fleet.files()), "the dead process's files are deleted"
    assert any(P1 in f for f in fleet.files()) and any(P3 in f for f in fleet.files())

    # Counters and histograms: unchanged, the dead process's share is archived.
    for sample in ("tt_tasks_total", "tt_runtime_seconds_bucket", "tt_runtime_seconds_sum"):
        assert after.by_label(sample, "task") == pytest.approx(before.by_label(sample, "task"))
    assert after.sum_of("tt_tasks_total", task="a", queue="q2") == 7  # only P2 had it
    # Live gauges: the dead process stops counting at once.
    assert after.sum_of("tt_active") == 1  # was 1 + 2 + 0
    assert after.sum_of("tt_peak") == 5  # P2's 9 is gone
    assert after.sum_of("tt_low") == 2  # P2's 1 is gone
    exposition = exposition_of(after)[0]
    assert key("tt_memory_bytes", pid=P2) not in exposition
    assert exposition[key("tt_memory_bytes", pid=P1)] == 100
    for k, v in before_exposition.items():
        if k[0].startswith(("tt_tasks", "tt_runtime")):
            assert exposition[k] == pytest.approx(v), k

    # Counters never go backwards: live processes add on top of the archive.
    fleet(P1).tasks.labels(task="a", queue="q2").inc(1)
    assert store.read().sum_of("tt_tasks_total", task="a", queue="q2") == 8
    assert store.read().sum_of("tt_tasks_total") == before.sum_of("tt_tasks_total") + 1


def test_compact_returns_the_number_of_dead_processes_folded(fleet: Fleet) -> None:
    work(fleet)
    store = fleet.store()
    total = store.read().sum_of("tt_tasks_total")
    assert store.compact() == 0
    fleet.kill(P1)
    fleet.kill(P3)
    assert store.compact() == 2
    assert store.compact() == 0
    assert {f for f in fleet.files() if P1 in f or P3 in f} == set()
    assert store.read().sum_of("tt_tasks_total") == total


def db_bytes(entries: dict[str, float]) -> bytes:
    """A small prometheus_client ``MmapedDict`` file (``used`` == file size)."""
    body = b""
    for k, value in entries.items():
        encoded = k.encode()
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        body += struct.pack(f"i{len(padded)}sdd", len(encoded), padded, value, 0.0)
    return struct.pack("ii", 8 + len(body), 0) + body


def test_small_file_writer_matches_mmaped_dict(tmp_path: Path) -> None:
    entries = {mmap_key("tt_tasks", "tt_tasks_total", ["task"], [t], "h"): v
               for t, v in (("a", 1.0), ("bb", 2.5), ("ccc", 7.0))}
    d = MmapedDict(str(tmp_path / "counter_1-1.db"))
    for k, v in entries.items():
        d.write_value(k, v, 0.0)
    d.close()
    expected = db_bytes(entries)
    assert (tmp_path / "counter_1-1.db").read_bytes()[:len(expected)] == expected


def test_folding_a_thousand_dead_processes(fleet: Fleet) -> None:
    fleet(P1).tasks.labels(task="a", queue="q").inc(1)
    live_files = fleet.files()
    store = fleet.store()
    store.read()  # the store already knows the live process's files
    directory = Path(fleet.directory)
    task_key = mmap_key("tt_tasks", "tt_tasks_total", ["task", "queue"], ["a", "q"],
                        "Tasks finished.")
    bucket_keys = [mmap_key("tt_runtime_seconds", "tt_runtime_seconds_bucket", ["task", "le"],
                            ["a", le], "Task runtime.") for le in ("0.1", "1.0", "10.0", "+Inf")]
    sum_key = mmap_key("tt_runtime_seconds", "tt_runtime_seconds_sum", ["task"], ["a"],
                       "Task runtime.")
    active_key = mmap_key("tt_active", "tt_active", [], [], "Executing now.")
    for i in range(1000):
        ident = f"{20000 + i}-{i}"
        (directory / f"counter_{ident}.db").write_bytes(db_bytes({task_key: i + 1}))
        if i % 10 == 0:  # not all: creating files is what takes the time here
            (directory / f"histogram_{ident}.db").write_bytes(db_bytes(
                {bucket_keys[0]: 0, bucket_keys[1]: 1, bucket_keys[2]: 0, bucket_keys[3]: 0,
                 sum_key: 0.5}))
            (directory / f"gauge_livesum_{ident}.db").write_bytes(db_bytes({active_key: 1}))
    assert len(fleet.files()) == len(live_files) + 1000 + 2 * 100

    assert store.compact() == 1000
    assert fleet.files() == live_files
    reading = store.read()
    assert reading.sum_of("tt_tasks_total") == 1 + sum(range(1, 1001))
    assert reading.sum_of("tt_runtime_seconds_bucket", le="1.0") == 100
    assert reading.sum_of("tt_runtime_seconds_bucket") == 100
    assert reading.sum_of("tt_runtime_seconds_sum") == pytest.approx(50.0)
    assert reading.sum_of("tt_active") == 0  # only P1's gauge, which is 0
    assert store.compact() == 0
    assert exposition_of(reading)[0][key("tt_runtime_seconds_count", task="a")] == 100


def test_a_dead_process_folded_by_read_without_ever_being_seen_alive(fleet: Fleet) -> None:
    fleet(P1).tasks.labels(task="a", queue="q").inc(2)
    fleet(P2).tasks.labels(task="a", queue="q").inc(3)
    fleet.kill(P2)
    store = fleet.store()
    assert store.read().sum_of("tt_tasks_total") == 5
    assert store.read().sum_of("tt_tasks_total") == 5  # archived once, not twice
    assert not any(P2 in f for f in fleet.files())
    assert f"counter_{P1}.db" in fleet.files()


# -- bad files ------------------------------------------------------------


def test_empty_and_garbage_files_do_not_break_a_read(fleet: Fleet) -> None:
    work(fleet)
    expected = fleet.store().read().sum_of("tt_tasks_total")
    directory = Path(fleet.directory)
    (directory / "counter_123-456.db").write_bytes(b"")
    (directory / "counter_999-1.db").write_bytes(b"\xff" * 100)  # impossible used size
    # A plausible header, then an entry whose length runs past the used size.
    (directory / "histogram_999-2.db").write_bytes(
        (64).to_bytes(4, "little") + bytes(4) + (1000).to_bytes(4, "little") + bytes(60))
    (directory / "gauge_livesum_999-3.db").write_bytes(b"\x00" * 3)
    fleet.live.update({"123-456", "999-1", "999-2", "999-3"})

    store = fleet.store()
    for _ in range(2):  # also when the store has seen them before
        reading = store.read()
        assert reading.sum_of("tt_tasks_total") == expected
        assert reading.sum_of("tt_active") == 3
        exposition_of(reading)  # the exposition can still be written

    # Once their owners are gone they are cleaned up like any other file.
    fleet.live.difference_update({"123-456", "999-1", "999-2", "999-3"})
    assert store.compact() == 4
    assert store.read().sum_of("tt_tasks_total") == expected
    assert not any("999-" in f or "123-456" in f for f in fleet.files())


def test_file_names_that_are_not_prometheus_client_files_are_ignored(fleet: Fleet) -> None:
    fleet(P1).tasks.labels(task="a", queue="q").inc(2)
    directory = Path(fleet.directory)
    foreign = ["notes.db", "counter_1-1_extra.db", "gauge_livesum.db", "summary_1-1.db",
               "counter.db", "readme.txt"]
    source = directory / f"counter_{P1}.db"
    for name in foreign:  # valid content: only the name is wrong
        (directory / name).write_bytes(source.read_bytes())
    store = MetricStore(fleet.directory, is_alive=lambda owner: owner == P1)
    assert store.read().sum_of("tt_tasks_total") == 2
    store2 = MetricStore(fleet.directory, is_alive=lambda owner: False)
    assert store2.compact() == 1  # P1 only
    assert sorted(os.listdir(fleet.directory)) == sorted(foreign)


def test_an_empty_directory_reads_as_nothing(metrics_dir: Path) -> None:
    reading = MetricStore(str(metrics_dir), is_alive=lambda owner: True).read()
    assert reading.totals == {} and reading.families() == []


# -- StoreReading helpers -------------------------------------------------


def test_sum_of_by_label_and_processes_where(fleet: Fleet) -> None:
    work(fleet)
    reading = fleet.store().read()
    assert reading.sum_of("tt_tasks_total", task="b") == 12
    assert reading.sum_of("tt_tasks_total", task="nope") == 0
    assert reading.sum_of("no_such_sample") == 0
    assert reading.by_label("tt_tasks_total", "task") == {"a": 15, "b": 12}
    assert reading.by_label("tt_tasks_total", "queue") == {"q1": 9, "q2": 18}
    assert reading.by_label("tt_runtime_seconds_sum", "task") == pytest.approx(
        {"a": 2.6, "b": 20.0})
    # Gauges per live process: P1 and P2 are busy, P3 is not.
    assert reading.processes_where("tt_active", lambda v: v > 0) == 2
    assert reading.processes_where("tt_active", lambda v: v == 0) == 1
    assert reading.processes_where("tt_memory_bytes", lambda v: v >= 200) == 2
    assert reading.processes_where("tt_tasks_total", lambda v: True) == 0  # not a gauge
    assert not math.isnan(reading.sum_of("tt_memory_bytes"))


def test_process_identifier_is_renewed_in_a_forked_child() -> None:
    import os

    from tasker.metrics import identity

    parent = identity.process_identifier()
    assert parent == identity.identity_of(os.getpid())
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its identifier, then leave without cleanup
        os.write(write_end, identity.process_identifier().encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 200).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child != parent and child.startswith(f"{pid}-")
    assert identity.process_identifier() == parent


# -- concurrent writers (see the store's module doc) ------------------------


def _key(task: str) -> str:
    return mmap_key("tt_tasks", "tt_tasks_total", ["task"], [task], "h")


def test_an_entry_not_yet_visible_ends_the_parse_without_dropping_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    """A weakly ordered CPU may show the new ``used`` before the entry's bytes."""
    from tasker.metrics import store as store_module

    complete = db_bytes({_key("a"): 3.0, _key("b"): 4.0})
    split = len(db_bytes({_key("a"): 3.0}))
    path = tmp_path / "counter_1-1.db"
    # ``used`` covers both entries, the second one's bytes are still zeros.
    path.write_bytes(complete[:split] + bytes(len(complete) - split))
    store = MetricStore(str(tmp_path), is_alive=lambda owner: True)
    assert store.read().sum_of("tt_tasks_total") == 3.0  # the file is kept, "a" is read
    path.write_bytes(complete)  # the writer's bytes arrive
    assert store.read().by_label("tt_tasks_total", "task") == {"a": 3.0, "b": 4.0}
    assert "metrics.file_corrupt" not in caplog.text

    # An entry that never completes is reported, once the grace period is over.
    monkeypatch.setattr(store_module, "INCOMPLETE_GRACE", 0.0)
    other = tmp_path / "counter_1-2.db"
    other.write_bytes(complete[:split] + bytes(len(complete) - split))
    store.read()
    reading = store.read()
    assert "metrics.file_corrupt" in caplog.text
    # ... and its complete entries still count: 3 + 4 from the first file, 3 from this one.
    assert reading.sum_of("tt_tasks_total") == 10.0


def test_a_file_that_cannot_be_read_any_more_keeps_its_last_counts(tmp_path: Path) -> None:
    path = tmp_path / "counter_1-1.db"
    path.write_bytes(db_bytes({_key("a"): 7.0}))
    store = MetricStore(str(tmp_path), is_alive=lambda owner: True)
    assert store.read().sum_of("tt_tasks_total") == 7.0
    path.write_bytes(b"\xff" * 64)  # garbage from now on
    assert store.read().sum_of("tt_tasks_total") == 7.0
    # Folded when its process is gone: the archive keeps the 7.
    store._is_alive = lambda owner: False
    assert store.compact() == 1
    assert store.read().sum_of("tt_tasks_total") == 7.0


def test_a_live_counter_is_never_reported_lower_than_it_was_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy taken while a writer was at work (the two reads differ) never shows a reset."""
    from tasker.metrics import store as store_module

    copies: list[tuple[bytes, bool]] = []

    def read_used(path: str) -> tuple[bytes, int, bool]:
        data, settled = copies.pop(0)
        return data, len(data), settled

    monkeypatch.setattr(store_module, "_read_used", read_used)
    store = MetricStore(str(tmp_path), is_alive=lambda owner: True)
    (tmp_path / "counter_1-1.db").write_bytes(b"")  # the name the scan finds
    copies.append((db_bytes({_key("a"): 10.0, _key("b"): 5.0}), True))
    assert store.read().sum_of("tt_tasks_total") == 15.0
    copies.append((db_bytes({_key("a"): 0.0, _key("b"): 6.0}), False))  # "a" torn to 0
    assert store.read().by_label("tt_tasks_total", "task") == {"a": 10.0, "b": 6.0}
    copies.append((db_bytes({_key("a"): 11.0, _key("b"): 6.0, _key("c"): 1.0}), False))
    assert store.read().by_label("tt_tasks_total", "task") == {"a": 11.0, "b": 6.0, "c": 1.0}
    copies.append((db_bytes({_key("a"): 12.0, _key("b"): 7.0, _key("c"): 2.0}), True))
    assert store.read().by_label("tt_tasks_total", "task") == {"a": 12.0, "b": 7.0, "c": 2.0}


def test_a_live_gauge_may_go_down(tmp_path: Path) -> None:
    path = tmp_path / "gauge_livesum_1-1.db"
    key = mmap_key("tt_active", "tt_active", [], [], "h")
    path.write_bytes(db_bytes({key: 3.0}))
    store = MetricStore(str(tmp_path), is_alive=lambda owner: True)
    assert store.read().sum_of("tt_active") == 3.0
    path.write_bytes(db_bytes({key: 1.0}))
    assert store.read().sum_of("tt_active") == 1.0
