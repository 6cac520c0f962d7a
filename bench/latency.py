"""Publish -> task start latency at a low steady rate: tasker vs bare Celery.

    python -m bench.latency [--quick] [--rate 20] [--duration 15] [--rounds 3]

For every round, each variant in turn (bare, tasker, bare, tasker ...): start
a worker node (prefork ``-c 2``), wait until it ran 10 warm-up tasks, then
publish ``bench.latency(time.time(), key)`` at a steady rate. The task body
(:mod:`bench.tasks`, the same code in both variants) computes
``time.time() - published_at`` when it starts and RPUSHes it to a Redis list;
the benchmark reads the list when every task has reported. Publisher and
worker run on the same host, so both timestamps come from one clock.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Variant, progress

BENCH = "latency"

#: Add a variant (e.g. tracing, when it lands) here and to DEFAULT_VARIANTS.
VARIANTS: dict[str, Variant] = {
    "bare": Variant("bare", "bare", "bare Celery"),
    "tasker": Variant("tasker", "tasker", "tasker with metrics (default configuration)"),
}
DEFAULT_VARIANTS = ("bare", "tasker")
BASELINE = "bare"
WARMUP_TASKS = 10
PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}


def wait_for_list(client: Any, key: str, count: int, worker: common.Worker,
                  timeout: float) -> None:
    common.wait_until(worker, lambda: (client.llen(key) >= count,
                                       f"{client.llen(key)}/{count} results"), timeout,
                      interval=0.05)


def latency_stats(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1e3 for s in seconds]
    out = {name: common.quantile(ms, q) for name, q in PERCENTILES.items()}
    out.update({"mean": statistics.fmean(ms), "min": min(ms), "max": max(ms)})
    return out


def run_once(variant: Variant, label: str, rate: float, duration: float, client: Any,
             log_dir: Path) -> tuple[dict[str, Any], list[float]]:
    queue = f"{common.SESSION}-{BENCH}-{variant.name}-{label}"
    warm_key, key = f"{queue}-warmup", f"{queue}-results"
    extra = ["--include", "bench.tasker_tasks"] if variant.app == "tasker" else []
    worker = common.start_worker(variant, queue, f"{queue}-w", log_dir, extra)
    try:
        common.publish(variant.app, queue, count=WARMUP_TASKS, latency_key=warm_key)
        wait_for_list(client, warm_key, WARMUP_TASKS, worker, timeout=90)
        pub = common.publish(variant.app, queue, latency_key=key, rate=rate, duration=duration,
                             timeout=duration + 120)
        wait_for_list(client, key, pub["published"], worker, timeout=60)
        values = [float(v) for v in client.lrange(key, 0, -1)]
    finally:
        worker.stop()
        client.delete(warm_key, key)
        common.delete_queue_keys(client, queue)
    record = {"variant": variant.name, "round": label, "rate": rate, "duration": duration,
              "tasks": len(values), "late_publishes": pub["late_publishes"],
              "max_late_ms": pub["max_late_seconds"] * 1e3,
              "latency_ms": latency_stats(values), "worker_argv": worker.argv[1:]}
    return record, values


def summarize(runs: list[dict[str, Any]], samples: dict[str, list[float]],
              variants: list[str]) -> list[dict[str, Any]]:
    out = []
    pooled = {v: latency_stats(samples[v]) for v in variants if samples[v]}
    for name in variants:
        rs = [r for r in runs if r["variant"] == name]
        if not rs:
            continue
        summary: dict[str, Any] = {
            "variant": name, "description": VARIANTS[name].description,
            "tasks": sum(r["tasks"] for r in rs), "runs": len(rs),
            "pooled_ms": pooled[name],
            "per_run_ms": {p: common.spread(r["latency_ms"][p] for r in rs)
                           for p in (*PERCENTILES, "mean")},
        }
        if name != BASELINE and BASELINE in pooled:
            summary["pooled_minus_bare_ms"] = {
                p: pooled[name][p] - pooled[BASELINE][p] for p in PERCENTILES}
            summary["pooled_ratio_to_bare"] = {
                p: pooled[name][p] / pooled[BASELINE][p] for p in PERCENTILES}
        out.append(summary)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.latency", __doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="tasks per second (20)")
    parser.add_argument("--duration", type=float,
                        help="seconds of publishing per run (default 15; quick 4)")
    parser.add_argument("--rounds", type=int, help="rounds of A B (default 3; quick 1)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    args = parser.parse_args(argv)
    duration = args.duration or (4.0 if args.quick else 15.0)
    rounds = args.rounds or (1 if args.quick else 3)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    results = common.Results(BENCH, args, {
        "rate": args.rate, "duration": duration, "rounds": rounds, "variants": variants,
        "baseline": BASELINE, "warmup_tasks": WARMUP_TASKS,
        "variant_descriptions": {v: VARIANTS[v].description for v in variants},
        "worker_args": list(common.COMMON_WORKER_ARGS), "broker": common.REDIS_URL,
    })
    client = common.redis_client()
    ok = False
    try:
        runs: list[dict[str, Any]] = []
        samples: dict[str, list[float]] = {v: [] for v in variants}
        with tempfile.TemporaryDirectory(prefix="tasker-bench-logs-") as logs:
            for rnd in range(1, rounds + 1):
                for name in variants:
                    record, values = run_once(VARIANTS[name], str(rnd), args.rate, duration,
                                              client, Path(logs))
                    runs.append(record)
                    samples[name].extend(values)
                    results.write("run", record)
                    lat = record["latency_ms"]
                    progress(BENCH, f"round {rnd}/{rounds} {name}: p50 {lat['p50']:.2f} ms, "
                                    f"p95 {lat['p95']:.2f} ms, p99 {lat['p99']:.2f} ms "
                                    f"({record['tasks']} tasks)")
        for summary in summarize(runs, samples, variants):
            results.write("summary", summary)
            p = summary["pooled_ms"]
            progress(BENCH, f"{summary['variant']}: pooled p50 {p['p50']:.2f} ms, "
                            f"p95 {p['p95']:.2f} ms, p99 {p['p99']:.2f} ms")
        ok = True
    finally:
        common.cleanup_session_keys(client)
        client.close()
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
