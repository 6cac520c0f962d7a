"""tasker's multiprocess value class writes what prometheus_client's own would write."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import Counter, Gauge, Histogram, values
from prometheus_client.mmap_dict import MmapedDict

from tasker.metrics.values import multiprocess_value_class


@pytest.fixture
def use_values(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, type], None]]:
    """Install a value class for metrics created afterwards; close its files at the end."""
    installed: list[type] = []

    def install(directory: Path, cls: type) -> None:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
        monkeypatch.setattr(values, "ValueClass", cls)
        installed.append(cls)

    yield install
    for cls in installed:
        cls.close_all_files()


def _record(prefix: str) -> None:
    """The same updates, on metrics of the given name prefix."""
    tasks = Counter(f"{prefix}_tasks", "Tasks.", ["task", "queue"], registry=None)
    runtime = Histogram(f"{prefix}_runtime_seconds", "Runtime.", ["task"],
                        buckets=(0.01, 0.1, 1.0), registry=None)
    active = Gauge(f"{prefix}_active", "Active.", multiprocess_mode="livesum", registry=None)
    tasks.labels("a", "q").inc()
    tasks.labels("b", "q").inc(2.5)
    tasks.labels("a", "q").inc()
    for seconds in (0.005, 0.05, 0.5, 5.0):
        runtime.labels("a").observe(seconds)
    active.inc()
    active.inc()
    active.dec()
    active.set(7)


def test_files_are_byte_for_byte_those_of_prometheus_client(tmp_path: Path, use_values) -> None:
    stock_dir, ours_dir = tmp_path / "stock", tmp_path / "ours"
    stock_dir.mkdir()
    ours_dir.mkdir()
    use_values(stock_dir, values.MultiProcessValue(lambda: "p1"))
    _record("vv")
    use_values(ours_dir, multiprocess_value_class(lambda: "p1"))
    _record("vv")

    stock_files = sorted(p.name for p in stock_dir.iterdir())
    assert stock_files == ["counter_p1.db", "gauge_livesum_p1.db", "histogram_p1.db"]
    assert sorted(p.name for p in ours_dir.iterdir()) == stock_files
    for name in stock_files:
        assert (ours_dir / name).read_bytes() == (stock_dir / name).read_bytes(), name


def _file_values(path: Path) -> dict[str, float]:
    return {key: value for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path))}


def test_a_forked_child_writes_its_own_file(tmp_path: Path, use_values) -> None:
    use_values(tmp_path, multiprocess_value_class(lambda: str(os.getpid())))
    counter = Counter("fork_tasks", "Tasks.", registry=None)
    counter.inc()
    pid = os.fork()
    if pid == 0:  # the child: one update, then leave without cleanup
        try:
            counter.inc(5)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    counter.inc()

    parent = _file_values(tmp_path / f"counter_{os.getpid()}.db")
    child = _file_values(tmp_path / f"counter_{pid}.db")
    assert list(parent.values()) == [2.0]  # the child's update did not land here
    assert list(child.values()) == [5.0]  # nor did the parent's count carry over


def test_updates_from_threads_are_not_lost(tmp_path: Path, use_values) -> None:
    use_values(tmp_path, multiprocess_value_class(lambda: "p1"))
    counter = Counter("threads_tasks", "Tasks.", registry=None)

    def work() -> None:
        for _ in range(5000):
            counter.inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(_file_values(tmp_path / "counter_p1.db").values()) == [20000.0]


def test_values_written_after_the_file_grew_land(tmp_path: Path, use_values) -> None:
    use_values(tmp_path, multiprocess_value_class(lambda: "p1"))
    counter = Counter("grow_tasks", "Tasks.", ["task"], registry=None)
    first = counter.labels("first")
    first.inc()
    long = "x" * 300
    for i in range(4000):  # about 1.3 MB of keys: past the initial 1 MiB map
        counter.labels(f"{long}{i}").inc(i)
    first.inc()  # written through the grown map
    assert (tmp_path / "counter_p1.db").stat().st_size > 1024 * 1024
    found = _file_values(tmp_path / "counter_p1.db")
    assert found[next(k for k in found if '"first"' in k)] == 2.0
    assert found[next(k for k in found if f"{long}3999" in k)] == 3999.0


def _task_metrics(prefix: str) -> tuple[Counter, Counter, Histogram, Histogram, Gauge]:
    buckets = (0.001, 0.01, 0.1, 1.0)
    return (Counter(f"{prefix}_started", "S.", ["task"], registry=None),
            Counter(f"{prefix}_succeeded", "S.", ["task"], registry=None),
            Histogram(f"{prefix}_runtime_seconds", "R.", ["task"], buckets=buckets,
                      registry=None),
            Histogram(f"{prefix}_queue_wait_seconds", "W.", ["task"], buckets=buckets,
                      registry=None),
            Gauge(f"{prefix}_active", "A.", multiprocess_mode="livesum", registry=None))


def _run_tasks(series) -> None:  # type: ignore[no-untyped-def]
    """A task's start and end, as the pool-process receivers write them."""
    for wait, runtime, ok in ((0.0005, 0.02, True), (0.05, 0.0, False), (2.0, 1.0, True),
                              (0.01, 0.001, True)):
        series.add(((series.started_value, 1.0), (series.active_value, 1.0),
                    *series.queue_wait_values.pairs(wait)))
        ends = [(series.active_value, -1.0), *series.runtime_values.pairs(runtime)]
        if ok:
            ends.append((series.succeeded_value, 1.0))
        series.add(ends)


def _public_calls(started, succeeded, runtime, queue_wait, active) -> None:  # type: ignore[no-untyped-def]
    for wait, seconds, ok in ((0.0005, 0.02, True), (0.05, 0.0, False), (2.0, 1.0, True),
                              (0.01, 0.001, True)):
        started.inc()
        active.inc()
        queue_wait.observe(wait)
        active.dec()
        runtime.observe(seconds)
        if ok:
            succeeded.inc()


class _PublicOnly:
    """A metric child seen through its public methods only."""

    def __init__(self, child: object) -> None:
        for name in ("inc", "dec", "observe"):
            if hasattr(child, name):
                setattr(self, name, getattr(child, name))


@pytest.mark.parametrize("layout", ["direct", "public methods"])
def test_a_tasks_batched_writes_equal_the_public_calls(tmp_path: Path, use_values,
                                                       layout: str) -> None:
    """recording's per-task writes (one add_many per start or end) match inc/observe."""
    from tasker.metrics import recording

    public_dir, batched_dir = tmp_path / "public", tmp_path / "batched"
    public_dir.mkdir()
    batched_dir.mkdir()
    use_values(public_dir, multiprocess_value_class(lambda: "p1"))
    started, succeeded, runtime, wait, active = _task_metrics("tt")
    _public_calls(started.labels("a"), succeeded.labels("a"), runtime.labels("a"),
                  wait.labels("a"), active)
    use_values(batched_dir, multiprocess_value_class(lambda: "p1"))
    started, succeeded, runtime, wait, active = _task_metrics("tt")
    children = [started.labels("a"), succeeded.labels("a"), runtime.labels("a"),
                wait.labels("a"), active]
    if layout == "public methods":  # a prometheus_client whose children keep no _value
        children = [_PublicOnly(child) for child in children]
    series = recording._TaskSeries.of(*children)
    assert (series.add.__name__ == "add_many") == (layout == "direct")
    _run_tasks(series)
    for name in ("counter_p1.db", "histogram_p1.db", "gauge_livesum_p1.db"):
        assert _file_values(batched_dir / name) == _file_values(public_dir / name), name


def _wait_for_child(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (and the child killed) if it did not exit in time."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def test_a_child_forked_while_another_thread_holds_the_lock_still_writes(
        tmp_path: Path, use_values) -> None:
    """billiard forks a replacement process while a MainProcess thread (the received-count
    flush, an exit count, a scrape) may be inside an update: the child must not inherit
    a lock nobody in it will ever release."""
    use_values(tmp_path, multiprocess_value_class(lambda: str(os.getpid())))
    counter = Counter("forklock_tasks", "Tasks.", registry=None)
    counter.inc()
    holding, release = threading.Event(), threading.Event()

    def updates() -> Iterator[tuple[object, float]]:
        holding.set()  # add_many holds the lock while it iterates
        release.wait(10)
        yield counter._value, 1.0

    holder = threading.Thread(target=lambda: counter._value.add_many(updates()))
    holder.start()
    assert holding.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: one update, then leave without cleanup
        try:
            counter.inc(5)
            os._exit(0)
        finally:
            os._exit(1)
    try:
        status = _wait_for_child(pid, timeout=1.0)
    finally:
        release.set()
        holder.join()
    assert status == 0, "the child could not write within 1 s of its fork"
    assert list(_file_values(tmp_path / f"counter_{pid}.db").values()) == [5.0]


def test_a_child_forked_while_another_thread_creates_a_labelled_series_still_records(
        tmp_path: Path, use_values) -> None:
    """The same for prometheus_client's lock around a metric's children (``labels()``)."""
    from tasker.metrics.definitions import create_metrics

    use_values(tmp_path, multiprocess_value_class(lambda: str(os.getpid())))
    metrics = create_metrics()
    holding, release = threading.Event(), threading.Event()

    def hold_the_labels_lock() -> None:
        with metrics.process_exits._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_labels_lock)
    holder.start()
    assert holding.wait(5)
    pid = os.fork()
    if pid == 0:
        try:
            metrics.process_exits.labels("w", "lost").inc()
            os._exit(0)
        finally:
            os._exit(1)
    try:
        status = _wait_for_child(pid, timeout=1.0)
    finally:
        release.set()
        holder.join()
    assert status == 0, "the child could not create a series within 1 s of its fork"


def test_a_forked_child_files_only_the_series_it_writes(tmp_path: Path, use_values) -> None:
    """The node's shared memory holds, per pool process, what that process recorded."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    use_values(tmp_path, multiprocess_value_class(lambda: str(os.getpid())))
    counter = Counter("lazy_tasks", "Tasks.", ["task"], registry=None)
    runtime = Histogram("lazy_runtime_seconds", "R.", ["task"], buckets=(0.1, 1.0),
                        registry=None)
    children = [counter.labels(f"t{i}") for i in range(100)]  # zero series, as a node makes
    inherited = runtime.labels("t0")
    pid = os.fork()
    if pid == 0:
        try:
            children[7].inc(3)
            inherited.observe(0.5)
            os._exit(0)
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    assert list(_file_values(tmp_path / f"counter_{pid}.db").values()) == [3.0]
    assert len(_file_values(tmp_path / f"histogram_{pid}.db")) == 2  # one bucket, the sum
    # Merged with the parent's files, the histogram still has every bucket.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(tmp_path))
    text = generate_latest(registry).decode()
    for le in ("0.1", "1.0", "+Inf"):
        assert f'lazy_runtime_seconds_bucket{{le="{le}",task="t0"}}' in text, text
    assert 'lazy_runtime_seconds_count{task="t0"} 1.0' in text
