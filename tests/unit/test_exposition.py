"""tasker's /metrics text is byte for byte prometheus_client's generate_latest."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.metrics_core import Metric

from tasker.metrics.exposition import TextExposition


class _Static:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _families() -> list[Metric]:
    tasks = CounterMetricFamily("t_tasks", "Tasks finished.\nTwo lines, a \\ too.",
                                labels=["task", "queue"])
    tasks.add_metric(["billing.charge", "celery"], 3)
    tasks.add_metric(['odd "name"\\with\nnewline', "q"], 1e21)  # Go-style exponent
    tasks.add_metric(["zero", "q"], 0)
    runtime = HistogramMetricFamily("t_runtime_seconds", "Runtime.", labels=["task"])
    runtime.add_metric(["a"], buckets=[("0.005", 1), ("0.1", 4), ("+Inf", 7)], sum_value=2.25)
    gauges = GaugeMetricFamily("t_active", "Active.", labels=["worker", "pid"])
    gauges.add_metric(["w@h", "123-456"], 2)
    gauges.add_metric(["w@h", "124-457"], math.inf)
    gauges.add_metric(["w@h", "125-458"], -math.inf)
    gauges.add_metric(["w@h", "126-459"], math.nan)
    plain = GaugeMetricFamily("t_start_time_seconds", "Start.", value=1796074299.3523846)
    info = InfoMetricFamily("t_build", "Build facts.", value={"version": "1.2"})
    return [tasks, runtime, gauges, plain, info]


def test_output_equals_generate_latest() -> None:
    families = _families()
    expected = generate_latest(_Static(families))
    exposition = TextExposition()
    assert exposition.render(_Static(families)) == expected
    assert len(exposition._prefixes) == 14  # every sample took the fast path
    # The second scrape comes from the cached prefixes: still the same text.
    assert exposition.render(_Static(_families())) == expected


def test_changed_values_are_rendered_not_cached() -> None:
    exposition = TextExposition()
    first = GaugeMetricFamily("t_depth", "Depth.", labels=["queue"])
    first.add_metric(["celery"], 1)
    exposition.render(_Static([first]))
    second = GaugeMetricFamily("t_depth", "Depth.", labels=["queue"])
    second.add_metric(["celery"], 42)
    assert exposition.render(_Static([second])) == generate_latest(_Static([second]))
    assert b't_depth{queue="celery"} 42.0\n' in exposition.render(_Static([second]))


def test_families_outside_the_fast_path_are_left_to_generate_latest() -> None:
    registry = CollectorRegistry()
    # prometheus_client's own metrics carry _created samples (OpenMetrics).
    Counter("t_live_tasks", "Tasks.", ["task"], registry=registry).labels("a").inc()
    Histogram("t_live_seconds", "Seconds.", registry=registry).observe(0.3)
    Gauge("t_live_gauge", "G.", registry=registry).set(5)
    stamped = GaugeMetricFamily("t_stamped", "With a timestamp.", labels=["x"])
    stamped.add_metric(["1"], 2.0, timestamp=1700000000.5)
    dotted = Metric("t.dotted", "A UTF-8 name.", "gauge")
    dotted.add_sample("t.dotted", {"a": "b"}, 1.0)
    odd_label = Metric("t_odd_label", "A label name with a dash.", "gauge")
    odd_label.add_sample("t_odd_label", {"a-b": "c"}, 1.0)
    families = [*registry.collect(), stamped, dotted, odd_label]
    assert any(s.name.endswith("_created") for f in families for s in f.samples)

    exposition = TextExposition()
    assert exposition.render(_Static(families)) == generate_latest(_Static(families))


def test_the_prefix_cache_is_bounded() -> None:
    exposition = TextExposition(max_prefixes=10)
    for i in range(50):
        family = GaugeMetricFamily("t_churn", "Churn.", labels=["id"])
        family.add_metric([str(i)], i)
        assert exposition.render(_Static([family])) == generate_latest(_Static([family]))
    assert len(exposition._prefixes) <= 11
