"""Throughput overhead: no-op tasks, prefork ``-c 2``, Redis; tasker vs bare Celery.

    python -m bench.overhead [--quick] [--tasks N] [--rounds R] [--variants bare,tasker]

Rounds alternate the order of the variants (A B C, then C B A, ...) so that
a drift in the machine's speed does not favour whichever variant runs first.
In every round, each variant in turn:

1. publish N ``diagnostics.noop`` messages to a fresh queue through the
   variant's own app (tasker's publisher adds its headers, as in production);
2. start a worker node on that queue;
3. poll the broker only: the queue's list (``LLEN``) and kombu's ``unacked``
   hash (``HLEN``). The clock starts at the first poll that finds a message
   taken (LLEN + HLEN < N) and stops at the first that finds both empty;
   throughput = messages taken after the start / elapsed time. This asks
   nothing of the worker, so it costs both variants the same;
4. (tasker only, after the clock stopped) check ``/metrics.json`` counted all N;
5. stop the node (warm shutdown, then SIGKILL of its process group).

CPU time of the MainProcess and of the pool processes over the measured
interval is read from ``/proc`` (psutil) at the two clock ticks.

Single runs of the same code differ by ±15 % on a shared 2-CPU machine, so
the full run makes many short rounds (15 × 5,000 tasks) rather than a few
long ones, and the ratio that counts, each round's tasker ÷ the same round's
bare Celery, is reported as a median with a 95 % bootstrap confidence interval.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import common
from bench.common import Variant, progress

BENCH = "overhead"

#: Every variant this benchmark knows. The baseline is ``bare``; a new one is
#: one more entry here plus its name in DEFAULT_VARIANTS.
VARIANTS: dict[str, Variant] = {
    "bare": Variant("bare", "bare", "bare Celery"),
    "bare_events": Variant("bare_events", "bare", "bare Celery with task events (-E)",
                           worker_args=("-E",)),
    "tasker": Variant("tasker", "tasker",
                      "tasker with metrics (default configuration: tracing off)"),
    "tasker_tracing": Variant(
        "tasker_tracing", "tasker",
        "tasker with metrics and tracing on (spans written synchronously to a local file)",
        env=(("TASKER_OTEL_ENABLED", "true"),
             ("TASKER_OTEL_FILE", os.path.join(tempfile.gettempdir(),
                                               "tasker-bench-spans.jsonl")))),
    "tasker_main_only": Variant(
        "tasker_main_only", "tasker",
        "tasker with recording in the MainProcess only (diagnostic: what the pool "
        "processes' recording costs)",
        worker_args=("--include", "bench.main_only_recording")),
}
DEFAULT_VARIANTS = ("bare", "bare_events", "tasker", "tasker_main_only", "tasker_tracing")
#: Variants whose pool processes record nothing: their /metrics.json cannot count the tasks.
UNCOUNTED = frozenset({"tasker_main_only"})
BASELINE = "bare"
#: The issue's target: tasker's throughput / bare Celery's.
TARGET_RATIO = 0.97

POLL_INTERVAL = 0.002


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def cpu_snapshot(pid: int) -> dict[str, Any]:
    """CPU seconds of a worker's MainProcess and of each pool process now."""
    try:
        main = psutil.Process(pid)
        children = {}
        for child in main.children(recursive=False):
            try:
                children[child.pid] = _cpu_seconds(child)
            except psutil.Error:
                pass
        return {"main": _cpu_seconds(main), "children": children}
    except psutil.Error:
        return {"main": None, "children": {}}


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    if before["main"] is None or after["main"] is None:
        return {"main": None, "children": None}
    pool = sum(v - before["children"].get(pid, 0.0) for pid, v in after["children"].items())
    return {"main": after["main"] - before["main"], "children": pool}


def measure_drain(client: Any, worker: common.Worker, n: int, timeout: float) -> dict[str, Any]:
    """Wait until the queue and the unacked hash are empty; time it from the first take."""
    queue = worker.queue
    seen: dict[str, Any] = {"polls": 0}

    def drained() -> tuple[bool, str]:
        before = time.perf_counter()
        with client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.hlen("unacked")
            waiting, unacked = pipe.execute()
        now = (before + time.perf_counter()) / 2
        seen["polls"] += 1
        remaining = waiting + unacked
        if "t_first" not in seen and remaining < n:
            seen.update(t_first=now, remaining_first=remaining,
                        cpu_first=cpu_snapshot(worker.pid))
        if "t_first" in seen and remaining == 0:
            seen.update(t_end=now, cpu_end=cpu_snapshot(worker.pid))
            return True, "drained"
        return False, f"queue not drained ({waiting} waiting, {unacked} unacked)"

    common.wait_until(worker, drained, timeout, POLL_INTERVAL)
    taken = seen["remaining_first"]
    elapsed = seen["t_end"] - seen["t_first"]
    cpu = cpu_delta(seen["cpu_first"], seen["cpu_end"])
    per_task = {k: (None if v is None else v / taken * 1e3) for k, v in cpu.items()}
    return {"seconds": elapsed, "tasks_timed": taken,
            "tasks_per_second": taken / elapsed, "polls": seen["polls"],
            "cpu_ms_per_task_main": per_task["main"],
            "cpu_ms_per_task_pool": per_task["children"]}


def tasker_total_runs(worker: common.Worker, n: int, timeout: float = 15.0) -> int | None:
    """``total_runs`` of the node's ``/metrics.json`` once it reaches ``n`` (or the last seen)."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics.json"
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = common.http_json(url).get("total_runs")
        except OSError:
            pass
        if last is not None and last >= n:
            return last
        time.sleep(0.2)
    return last


class Runner:
    """Runs one measurement at a time; a node's shutdown overlaps the next publish only."""

    def __init__(self, client: Any, log_dir: Path) -> None:
        self.client = client
        self.log_dir = log_dir
        self._stopping: common.Worker | None = None

    def finish(self) -> None:
        if self._stopping is not None:
            self._stopping.stop()
            common.delete_queue_keys(self.client, self._stopping.queue)
            self._stopping = None

    def run(self, variant: Variant, label: str, n: int) -> dict[str, Any]:
        client = self.client
        queue = f"{common.SESSION}-{BENCH}-{variant.name}-{label}"
        common.delete_queue_keys(client, queue)
        started = time.monotonic()
        pub = common.publish(variant.app, queue, count=n, processes=2 if n >= 2000 else 1)
        queued = client.llen(queue)
        if queued != n:
            raise RuntimeError(f"published {n} but the queue holds {queued}")
        self.finish()  # the previous node is gone before this one starts
        if client.hlen("unacked"):
            raise RuntimeError("kombu's unacked hash is not empty before the run "
                               f"(db {common.REDIS_DB} must be used by the benchmark only)")
        worker = common.start_worker(variant, queue, f"{queue}-w", self.log_dir)
        try:
            drain = measure_drain(client, worker, n, timeout=max(120.0, n / 20))
            record: dict[str, Any] = {
                "variant": variant.name, "round": label, "tasks": n,
                "publish_seconds": pub["seconds"], **drain, "worker_argv": worker.argv[1:],
            }
            if variant.app == "tasker" and variant.name not in UNCOUNTED:
                record["tasker_total_runs"] = tasker_total_runs(worker, n)
        except BaseException:
            worker.stop()
            common.delete_queue_keys(client, queue)
            raise
        worker.begin_stop()
        self._stopping = worker
        record["wall_seconds"] = time.monotonic() - started
        return record


def summarize(runs: list[dict[str, Any]], variants: list[str]) -> list[dict[str, Any]]:
    by_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in runs:
        by_variant[r["variant"]].append(r)
    base_by_round = {r["round"]: r["tasks_per_second"] for r in by_variant.get(BASELINE, [])}
    base_median = (statistics.median(base_by_round.values()) if base_by_round else None)
    out = []
    for name in variants:
        rs = by_variant[name]
        if not rs:
            continue
        tps = [r["tasks_per_second"] for r in rs]
        paired = [r["tasks_per_second"] / base_by_round[r["round"]] for r in rs
                  if r["round"] in base_by_round]
        totals = [r["cpu_ms_per_task_main"] + r["cpu_ms_per_task_pool"] for r in rs
                  if r["cpu_ms_per_task_main"] is not None
                  and r["cpu_ms_per_task_pool"] is not None]
        summary: dict[str, Any] = {
            "variant": name,
            "cpu_ms_per_task_node": common.spread(totals or [float("nan")]),
            "description": VARIANTS[name].description,
            "tasks_per_second": common.spread(tps),
            "cpu_ms_per_task_main": common.spread(
                [r["cpu_ms_per_task_main"] for r in rs if r["cpu_ms_per_task_main"] is not None]
                or [float("nan")]),
            "cpu_ms_per_task_pool": common.spread(
                [r["cpu_ms_per_task_pool"] for r in rs if r["cpu_ms_per_task_pool"] is not None]
                or [float("nan")]),
        }
        if base_median:
            summary["ratio_to_bare"] = statistics.median(tps) / base_median
            summary["paired_ratio_to_bare"] = common.spread(paired)
            summary["paired_ratio_to_bare"]["ci95"] = common.median_ci95(paired)
        if VARIANTS[name].app == "tasker" and name not in UNCOUNTED:
            summary["all_counted"] = all(r.get("tasker_total_runs") == r["tasks"] for r in rs)
            if base_median:
                summary["target_ratio"] = TARGET_RATIO
                # The per-round (paired) median: robust to the machine's load drifting.
                summary["target_met"] = summary["paired_ratio_to_bare"]["median"] >= TARGET_RATIO
        out.append(summary)
    return out


def round_order(variants: list[str], rnd: int) -> list[str]:
    """Round 1 runs the variants as given, round 2 in reverse, and so on."""
    return list(variants) if rnd % 2 else list(reversed(variants))


def run_rounds(runner: Runner, results: common.Results, variants: list[str], n: int,
               rounds: int, warmup: bool) -> list[dict[str, Any]]:
    if warmup:
        for name in variants:
            progress(BENCH, f"warm-up {name} ({min(n, 1000)} tasks, not recorded)")
            runner.run(VARIANTS[name], "warmup", min(n, 1000))
    runs = []
    for rnd in range(1, rounds + 1):
        for name in round_order(variants, rnd):
            record = runner.run(VARIANTS[name], str(rnd), n)
            runs.append(record)
            results.write("run", record)
            progress(BENCH, f"round {rnd}/{rounds} {name}: "
                            f"{record['tasks_per_second']:.0f} tasks/s "
                            f"({record['seconds']:.2f}s for {record['tasks_timed']})")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.overhead", __doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="tasks per run (default 5000; quick 500)")
    parser.add_argument("--rounds", type=int,
                        help="rounds of A B C / C B A (default 15; quick 1)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the unrecorded warm-up run of each variant")
    args = parser.parse_args(argv)
    n = args.tasks or (500 if args.quick else 5000)
    rounds = args.rounds or (1 if args.quick else 15)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    warmup = not args.no_warmup and not args.quick

    results = common.Results(BENCH, args, {
        "tasks_per_run": n, "rounds": rounds, "variants": variants, "baseline": BASELINE,
        "variant_descriptions": {v: VARIANTS[v].description for v in variants},
        "worker_args": list(common.COMMON_WORKER_ARGS), "warmup": warmup,
        "target_ratio": TARGET_RATIO, "concurrency": 2, "broker": common.REDIS_URL,
    })
    client = common.redis_client()
    ok = False
    try:
        stale = common.purge_stale_unacked(client)
        if stale:
            progress(BENCH, f"removed {stale} unacked messages left by earlier benchmark runs")
        with tempfile.TemporaryDirectory(prefix="tasker-bench-logs-") as logs:
            log_dir = Path(logs)
            runner = Runner(client, log_dir)
            try:
                runs = run_rounds(runner, results, variants, n, rounds, warmup)
            finally:
                runner.finish()
            for summary in summarize(runs, variants):
                results.write("summary", summary)
                paired = summary.get("paired_ratio_to_bare")
                progress(BENCH, f"{summary['variant']}: median "
                                f"{summary['tasks_per_second']['median']:.0f} tasks/s"
                                + (f", {paired['median']:.3f} x bare (median of rounds, "
                                   f"95% CI {paired['ci95'][0]:.3f}-{paired['ci95'][1]:.3f}, "
                                   f"rounds {paired['min']:.3f}-{paired['max']:.3f})"
                                   if paired else ""))
        ok = True
    finally:
        common.cleanup_session_keys(client)
        client.close()
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
