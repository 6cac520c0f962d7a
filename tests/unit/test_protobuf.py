"""The protobuf exposition, decoded by a reader that shares no code with the encoder."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import protobuf_decode as pd
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from tasker.metrics.exposition import TextExposition
from tasker.metrics.native import NativeCounts, bucket_index
from tasker.metrics.native_series import NativeObserving, NativeSeries
from tasker.metrics.protobuf import accepts_protobuf, encode
from tasker.metrics.store import MetricStore
from tasker.metrics.values import multiprocess_value_class

PROMETHEUS_ACCEPT = ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                     "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1")


@pytest.mark.parametrize("accept, wanted", [
    (PROMETHEUS_ACCEPT, True),
    ("text/plain;version=0.0.4", False),
    (None, False),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily", False),
    ("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
     "encoding=delimited;q=0", False),
])
def test_content_negotiation(accept: str | None, wanted: bool) -> None:
    assert accepts_protobuf(accept) is wanted


@pytest.fixture
def node_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    cls = multiprocess_value_class(lambda: "1-1")
    monkeypatch.setattr(values, "ValueClass", cls)
    yield tmp_path
    cls.close_all_files()


def _record(runtimes: list[float]) -> None:
    tasks = Counter("pt_tasks", "Tasks.", ["task"], registry=None)
    active = Gauge("pt_active", "Active.", multiprocess_mode="livesum", registry=None)
    runtime = Histogram("pt_runtime_seconds", "Runtime.", ["task"], buckets=(0.01, 0.1, 1.0),
                        registry=None)
    child = NativeObserving(runtime.labels("a"),
                            NativeSeries("pt_runtime_seconds", "Runtime.", ["task"], ["a"], 5))
    for seconds in runtimes:
        tasks.labels("a").inc()
        child.observe(seconds)
    active.set(2)


def test_families_and_native_buckets_decode_as_written(node_dir: Path) -> None:
    runtimes = [0.0, 0.003, 0.02, 0.02, 0.021, 0.5, 2.0]
    _record(runtimes)
    reading = MetricStore(str(node_dir), is_alive=lambda owner: True).read()
    extra = GaugeMetricFamily("pt_node_gauge", "A node gauge.", labels=["worker"])
    extra.add_metric(["w"], 1.5)
    decoded = pd.families(encode(reading.families() + [extra], reading.native_histograms()))

    assert decoded["pt_tasks_total"]["type"] == 0  # COUNTER, named with _total
    assert decoded["pt_tasks_total"]["metrics"][0] == {"labels": {"task": "a"}, "value": 7.0}
    assert decoded["pt_active"]["type"] == 1
    assert decoded["pt_node_gauge"]["metrics"][0] == {"labels": {"worker": "w"}, "value": 1.5}
    family = decoded["pt_runtime_seconds"]
    assert family["type"] == 4 and family["help"] == "Runtime."
    h = family["metrics"][0]["histogram"]
    assert family["metrics"][0]["labels"] == {"task": "a"}
    assert h["count"] == 7 and h["sum"] == pytest.approx(sum(runtimes))
    assert h["buckets"] == [(0.01, 2), (0.1, 5), (1.0, 6)]  # classic, +Inf left out
    assert h["schema"] == 5 and h["zero_count"] == 1 and 0 < h["zero_threshold"] < 1e-5
    expected: dict[int, int] = {}
    for seconds in runtimes[1:]:
        index = bucket_index(seconds, 5)
        expected[index] = expected.get(index, 0) + 1
    assert pd.native_buckets(h) == expected
    assert sum(expected.values()) + h["zero_count"] == h["count"]


def test_a_histogram_without_native_buckets_is_served_classic_only() -> None:
    family = Histogram("pt_plain_seconds", "Plain.", buckets=(1.0,), registry=None)
    family.observe(0.5)
    (metric_family,) = family.collect()
    h = pd.families(encode([metric_family], {}))["pt_plain_seconds"]["metrics"][0]["histogram"]
    assert "schema" not in h and h["count"] == 1 and h["buckets"] == [(1.0, 1)]


def test_an_empty_native_histogram_keeps_a_no_op_span() -> None:
    family = Histogram("pt_empty_seconds", "Empty.", buckets=(1.0,), registry=None)
    (metric_family,) = family.collect()
    native = {("pt_empty_seconds", ()): NativeCounts(5)}
    h = pd.families(encode([metric_family], native))["pt_empty_seconds"]["metrics"][0]
    assert h["histogram"]["spans"] == [(0, 0)] and h["histogram"]["schema"] == 5


def test_the_text_scrape_still_equals_the_stock_collector_for_the_classic_series(
        node_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    _record([0.003, 0.02, 0.5, 2.0, math.pi])
    reading = MetricStore(str(node_dir), is_alive=lambda owner: True).read()
    registry = CollectorRegistry()
    registry.register(type("C", (), {"collect": lambda self: reading.families()})())
    ours = TextExposition().render(registry)
    # The stock collector reads prometheus_client's own files: a copy without native_*.db.
    classic = tmp_path_factory.mktemp("classic")
    for path in node_dir.iterdir():
        if path.name.endswith(".db") and not path.name.startswith("native_"):
            shutil.copy(path, classic / path.name)
    stock = CollectorRegistry()
    MultiProcessCollector(stock, str(classic))
    theirs = generate_latest(stock).decode()
    assert sorted(ours.decode().splitlines()) == sorted(theirs.splitlines())
    assert b"_native" not in ours


def test_the_count_sent_is_the_native_total_when_the_files_were_read_apart() -> None:
    """Classic count and native buckets live in two files read a moment apart; Prometheus
    drops a scrape whose histogram count is not its buckets' total."""
    family = Histogram("pt_apart_seconds", "Apart.", buckets=(1.0,), registry=None)
    for _ in range(3):
        family.observe(0.5)
    (metric_family,) = family.collect()
    native = {("pt_apart_seconds", ()): NativeCounts(5, 1.0, {bucket_index(0.5, 5): 3.0})}
    h = pd.families(encode([metric_family], native))["pt_apart_seconds"]["metrics"][0]
    assert h["histogram"]["count"] == 4  # 1 in the zero bucket + 3: one observed since


def test_one_label_set_reached_by_two_routing_keys_shares_its_native_buckets(
        node_dir: Path) -> None:
    from prometheus_client import Histogram as H

    from tasker.metrics import recording
    from tasker.metrics.definitions import create_metrics

    metrics = create_metrics()
    recorder = recording.Recorder(metrics, None, "w", known_tasks=lambda: {},  # type: ignore
                                  queue_names=lambda e, r: "q", native_schema=5)
    assert H  # the recorder's histograms are prometheus_client's
    first = recorder.native_of(metrics.runtime, ("t", "q"))
    assert recorder.native_of(metrics.runtime, ("t", "q")) is first
    for _ in range(2):
        recorder.native_of(metrics.runtime, ("t", "q")).observe(0.5)
        recorder.child(metrics.runtime, "t", "q").observe(0.5)
    reading = MetricStore(str(node_dir), is_alive=lambda owner: True).read()
    (counts,) = [c for (name, labels), c in reading.native_histograms().items()
                 if name == "tasker_task_runtime_seconds"]
    assert sum(counts.buckets.values()) == 4
