"""Native histograms: a real Prometheus scraping a real prefork node, percentiles vs truth.

Prometheus (Debian's package) runs with ``--enable-feature=native-histograms``,
so it asks the node for the protobuf exposition and stores
``tasker_task_runtime_seconds`` as one native histogram. The tasks
(``diagnostics.timed``) append the runtime they measured for themselves to a
file; ``histogram_quantile`` over the scraped histogram must land within
5 % of the percentiles of those measurements: with a plain node, with pool
processes recycled every 5 tasks (their files merged after they exit), and
with a pool process SIGKILLed mid-run.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from servers import prometheus_config, start_prometheus
from support import REPO, http_get, parse_metrics, total, wait_for

#: (seconds, how many): a known mix of three runtimes. Not shorter than 25 ms:
#: tasker's runtime ends at task_postrun, after Celery's own handling of the
#: result (about 0.2 ms here, more on a busy machine), which a task cannot
#: measure for itself; at 25 ms that stays under 1 % of the runtime.
KNOWN_MIX = [(0.025, 60), (0.05, 30), (0.2, 10)]


def _measured(path: str) -> list[float]:
    try:
        with open(path) as f:
            return [float(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _true_range(values: list[float], q: float) -> tuple[float, float]:
    """The order statistics around the q-quantile's rank: any value between them is it."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    return ordered[int(position)], ordered[min(int(position) + 1, len(ordered) - 1)]


def _runtimes(mix: str, rng: random.Random) -> list[float]:
    if mix == "known":
        runtimes = [seconds for seconds, n in KNOWN_MIX for _ in range(n)]
    else:  # log-normal: median 50 ms, most between 20 and 150 ms
        runtimes = [min(0.5, max(0.02, rng.lognormvariate(-3.0, 0.5))) for _ in range(200)]
    rng.shuffle(runtimes)
    return runtimes


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("case, mix", [("plain", "known"), ("plain", "lognormal"),
                                       ("recycling", "known"), ("sigkill", "known")])
def test_native_quantiles_match_the_tasks_own_runtimes(case: str, mix: str, start_node, app,
                                                       tmp_path: Path) -> None:
    extra = ["--max-tasks-per-child", "5"] if case == "recycling" else []
    node = start_node(extra_args=extra)
    config = prometheus_config(tmp_path / "prometheus.yml", [f"127.0.0.1:{node.port}"],
                               [REPO / "deploy/prometheus/rules/tasker-recording.yml"])
    key = str(tmp_path / "runtimes.txt")
    runtimes = _runtimes(mix, random.Random(case))
    with start_prometheus(config, tmp_path / "prometheus",
                          ["--enable-feature=native-histograms"]) as prom:
        # Scraped before the first task: rate() in the recording rules sees every increase.
        wait_for(lambda: prom.query('count_over_time(up{job="tasker-worker"}[1m]) >= 2'),
                 timeout=30, interval=0.5, message="Prometheus scraping the node")
        with app.producer_or_acquire() as producer:
            for seconds in runtimes:
                app.send_task("diagnostics.timed", args=(seconds, key), queue=node.queue,
                              producer=producer)
        if case == "sigkill":  # a pool process dies mid-task; its files stay merged
            busy = wait_for(lambda: [p for p in node.child_pids()
                                     if total(node.scrape(), "tasker_worker_tasks_active") > 0],
                            timeout=30, message="a busy pool process")
            os.kill(busy[0], signal.SIGKILL)
        done = len(runtimes) - (1 if case == "sigkill" else 0)
        wait_for(lambda: len(_measured(key)) >= done, timeout=120, interval=0.5,
                 message="every task measured")
        selector = 'tasker_task_runtime_seconds{task="diagnostics.timed"}'

        def scraped_in_full() -> bool:  # Prometheus holds what the node serves now
            now = total(node.scrape(), "tasker_task_runtime_seconds_count",
                        task="diagnostics.timed")
            return any(float(r["value"][1]) == now
                       for r in prom.query(f"histogram_count({selector})"))

        # (as a native histogram: no _bucket series)
        wait_for(scraped_in_full, timeout=30, interval=0.5, message="Prometheus up to date")
        assert not prom.query('tasker_task_runtime_seconds_bucket{task="diagnostics.timed"}')
        truth = _measured(key)
        for q in (0.5, 0.95, 0.99):
            result = prom.query(f"histogram_quantile({q}, {selector})")
            assert result, f"no quantile {q}: {prom.log_tail(2000)}"
            got = float(result[0]["value"][1])
            low, high = _true_range(truth, q)
            assert 0.95 * low <= got <= 1.05 * high, (
                f"p{q * 100:g}: {got:.5f}, true {low:.5f}..{high:.5f}")
        if case == "plain":  # the shipped recording rules take the native branch
            rule = 'tasker:task_runtime_seconds:p95{task="diagnostics.timed"}'
            recorded = wait_for(
                lambda: [r for r in prom.query(rule) if r["value"][1] != "NaN"],
                timeout=30, interval=0.5, message="the p95 recording rule over the load")
            low, high = _true_range(truth, 0.95)
            assert 0.95 * low <= float(recorded[0]["value"][1]) <= 1.05 * high, recorded


def test_a_text_scrape_keeps_the_classic_buckets_and_a_protobuf_scrape_carries_native_ones(
        start_node, app, tmp_path: Path) -> None:
    node = start_node()
    key = str(tmp_path / "runtimes.txt")
    for seconds in (0.01, 0.02, 0.05):
        app.send_task("diagnostics.timed", args=(seconds, key), queue=node.queue)
    wait_for(lambda: len(_measured(key)) >= 3, timeout=30, message="three tasks")
    samples = node.scrape()  # text: classic buckets, no native series
    assert total(samples, "tasker_task_runtime_seconds_count", task="diagnostics.timed") == 3
    assert not any(name.endswith("_native") for name, _ in samples)
    status, headers, body = http_get(f"{node.url}/metrics", headers={
        "Accept": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;"
                  "encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/vnd.google.protobuf"), headers
    assert b"tasker_task_runtime_seconds" in body and len(body) > 100
    # The same families in both formats (the protobuf decoded in tests/unit/test_protobuf.py).
    assert parse_metrics  # text parsing is what node.scrape() did above
