"""Throughput overhead: no-op tasks, prefork ``-c 2``, Redis; tasker vs bare Celery.

    python -m bench.overhead [--quick] [--tasks N] [--generations G] [--cycles C]
                             [--variants bare,tasker]

The machine's speed drifts: on the shared 2-CPU machine this was written on,
the MainProcess's CPU per task (and with it tasks/s) moved by up to 60 %
between runs ten seconds apart, for every variant alike. So the variants are
compared in short bursts a second or two apart, on nodes that are already
running, rather than in whole runs of freshly started nodes:

1. a *generation* starts one worker node per variant, side by side, each
   consuming its own queue; before they start, each variant's publisher
   (tasker's adds its headers, as in production) fills a staging list with
   all the no-op messages that node will get;
2. a *cycle* gives every node in turn a burst of N messages, moved from its
   staging list into its queue in one atomic Redis script, so the burst
   appears at once and publishing costs nothing during the measurement; the
   order of the variants alternates from cycle to cycle (A B C, then C B A);
3. a burst is timed by polling the broker only: the queue's list (``LLEN``)
   and kombu's ``unacked`` hash (``HLEN``). The clock starts at the first poll
   that finds a message taken and stops at the first that finds both empty;
   throughput = messages taken after the start / elapsed time. This asks
   nothing of the worker, so it costs every variant the same;
4. each node first gets one unrecorded warm-up burst; at the end of the
   generation every tasker node's ``/metrics.json`` must count all it ran.

Nodes waiting for their turn are idle (a blocking ``BRPOP``). Several
generations (fresh processes) cover whatever varies with a process's start.
CPU time of each MainProcess and of its pool processes over a burst is read
from ``/proc`` (psutil). The ratio that counts, each cycle's tasker ÷ the
same cycle's bare Celery, is reported as a median with a 95 % bootstrap
confidence interval.
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
VARIANTS["bare_tasker_headers"] = Variant(
    "bare_tasker_headers", "bare",
    "bare Celery fed messages carrying headers shaped like tasker's three stamps "
    "(diagnostic: what the bigger message costs)",
    publish_args=("--tasker-headers",))
VARIANTS["tasker_no_received"] = Variant(
    "tasker_no_received", "tasker",
    "tasker without its receipt step in the MainProcess (diagnostic: what "
    "they cost; the received counter and the correlation check at receipt are off)",
    worker_args=("--include", "bench.no_received_receivers"))
VARIANTS["bare_client_reuse"] = Variant(
    "bare_client_reuse", "bare",
    "bare Celery with tasker's one change to Celery's own work, alone: kombu's Redis "
    "channel reuses one redis-py client, skips idle channels in its poller and keeps a "
    "message's text for its unacked copy (tasker/contracts/kombu_client.py)",
    env=(("BENCH_REUSE_BROKER_CLIENT", "1"),))
VARIANTS["bare_reuse_tasker_headers"] = Variant(
    "bare_reuse_tasker_headers", "bare",
    "bare_client_reuse fed messages carrying headers shaped like tasker's stamps "
    "(diagnostic: what tasker's bigger message costs Celery's own work)",
    env=(("BENCH_REUSE_BROKER_CLIENT", "1"),), publish_args=("--tasker-headers",))
VARIANTS["tasker_own_client"] = Variant(
    "tasker_own_client", "tasker",
    "tasker without that change (TASKER_REUSE_BROKER_CLIENT=false): what tasker's "
    "measuring costs, against bare",
    env=(("TASKER_REUSE_BROKER_CLIENT", "false"),))
VARIANTS["tasker_plain_client"] = Variant(
    "tasker_plain_client", "tasker",
    "tasker fed by a plain Celery client (no tasker headers: every message's correlation "
    "id is the worker's to give)",
    publisher="bare")
VARIANTS["tasker_no_periodic"] = Variant(
    "tasker_no_periodic", "tasker",
    "tasker without its periodic-work reader in the MainProcess (diagnostic: what "
    "reading tasker.periodic costs)",
    worker_args=("--include", "bench.no_periodic_consumer"))
VARIANTS["tasker_plain_no_periodic"] = Variant(
    "tasker_plain_no_periodic", "tasker",
    "tasker_no_periodic fed by a plain Celery client (diagnostic: tasker's per-message work "
    "without its stamped headers)",
    worker_args=("--include", "bench.no_periodic_consumer"), publisher="bare")
DEFAULT_VARIANTS = ("bare", "bare_events", "bare_client_reuse", "tasker", "tasker_own_client",
                    "tasker_tracing", "tasker_plain_client")
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
        times = main.cpu_times()
        return {"main": times.user + times.system, "main_system": times.system,
                "children": children}
    except psutil.Error:
        return {"main": None, "main_system": None, "children": {}}


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
    if before["main"] is None or after["main"] is None:
        return {"main": None, "main_system": None, "children": None}
    pool = sum(v - before["children"].get(pid, 0.0) for pid, v in after["children"].items())
    return {"main": after["main"] - before["main"],
            "main_system": after["main_system"] - before["main_system"], "children": pool}


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
            # The kernel's share of it (system calls: the sockets to Redis and the pipes).
            "cpu_ms_per_task_main_system": per_task["main_system"],
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


#: Moves up to ARGV[1] messages from the staging list to the queue, oldest first,
#: in one script: the worker sees the whole burst at once.
MOVE_BURST = """
local moved = 0
for i = 1, tonumber(ARGV[1]) do
  if not redis.call('RPOPLPUSH', KEYS[1], KEYS[2]) then break end
  moved = moved + 1
end
return moved
"""
WARMUP_TASKS = 500


class Generation:
    """One worker node per variant, running side by side, each fed bursts from its staging list."""

    def __init__(self, client: Any, variants: list[str], label: str, log_dir: Path,
                 burst: int, cycles: int) -> None:
        self.client = client
        self.variants = variants
        self.label = label
        self.log_dir = log_dir
        self.burst = burst
        self.cycles = cycles
        self.workers: dict[str, common.Worker] = {}
        self._move = client.register_script(MOVE_BURST)
        #: A program the nodes run under (bench.instructions: valgrind).
        self.worker_wrapper: tuple[str, ...] = ()
        self.warmup_tasks = WARMUP_TASKS

    def queue(self, name: str) -> str:
        return f"{common.SESSION}-{BENCH}-{name}-{self.label}"

    def staging(self, name: str) -> str:
        return f"{self.queue(name)}-staging"

    def start(self) -> None:
        total = self.warmup_tasks + self.burst * self.cycles
        for name in self.variants:
            variant = VARIANTS[name]
            common.publish(variant.publisher or variant.app, self.staging(name), count=total,
                           processes=2 if total >= 2000 else 1,
                           extra_args=VARIANTS[name].publish_args)
            staged = self.client.llen(self.staging(name))
            if staged != total:
                raise RuntimeError(f"published {total} for {name} but staged {staged}")
        if self.client.hlen("unacked"):
            raise RuntimeError("kombu's unacked hash is not empty before the run "
                               f"(db {common.REDIS_DB} must be used by the benchmark only)")
        for name in self.variants:
            queue = self.queue(name)
            self.workers[name] = common.start_worker(VARIANTS[name], queue, f"{queue}-w",
                                                     self.log_dir, wrapper=self.worker_wrapper)
        for name in self.variants:  # a drained warm-up burst: the node is up and warm
            self.run_burst(name, self.warmup_tasks, timeout=600.0 if self.worker_wrapper else 120.0)

    def run_burst(self, name: str, n: int, timeout: float | None = None) -> dict[str, Any]:
        worker = self.workers[name]
        moved = self._move(keys=[self.staging(name), worker.queue], args=[n])
        if moved != n:
            raise RuntimeError(f"{name}: staging list had {moved} messages, not {n}")
        return measure_drain(self.client, worker, n, timeout or max(60.0, n / 20))

    def check_counts(self) -> dict[str, int | None]:
        """tasker nodes: ``total_runs`` of ``/metrics.json`` (should be all they ran)."""
        expected = self.warmup_tasks + self.burst * self.cycles
        return {name: tasker_total_runs(self.workers[name], expected)
                for name in self.variants
                if VARIANTS[name].app == "tasker" and name not in UNCOUNTED}

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.begin_stop()
        for worker in self.workers.values():
            worker.stop()
        for name in self.variants:
            common.delete_queue_keys(self.client, self.queue(name))


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
            summary["all_counted"] = all(
                r.get("tasker_total_runs") == r.get("tasker_expected_runs", r["tasks"])
                for r in rs)
            if base_median:
                summary["target_ratio"] = TARGET_RATIO
                # The per-round (paired) median: robust to the machine's load drifting.
                summary["target_met"] = summary["paired_ratio_to_bare"]["median"] >= TARGET_RATIO
        out.append(summary)
    return out


def round_order(variants: list[str], rnd: int) -> list[str]:
    """Round 1 runs the variants as given, round 2 in reverse, and so on."""
    return list(variants) if rnd % 2 else list(reversed(variants))


def run_generations(client: Any, log_dir: Path, results: common.Results,
                    variants: list[str], burst: int, generations: int,
                    cycles: int) -> list[dict[str, Any]]:
    runs = []
    for gen in range(1, generations + 1):
        progress(BENCH, f"generation {gen}/{generations}: staging "
                        f"{WARMUP_TASKS + burst * cycles:,} messages per variant, "
                        "starting the nodes")
        generation = Generation(client, variants, f"g{gen}", log_dir, burst, cycles)
        try:
            generation.start()
            records = []
            for cycle in range(1, cycles + 1):
                for name in round_order(variants, (gen - 1) * cycles + cycle):
                    drain = generation.run_burst(name, burst)
                    record = {"variant": name, "round": f"{gen}.{cycle}", "generation": gen,
                              "tasks": burst, **drain,
                              "worker_argv": generation.workers[name].argv[1:]}
                    records.append(record)
                    progress(BENCH, f"generation {gen} cycle {cycle}/{cycles} {name}: "
                                    f"{record['tasks_per_second']:.0f} tasks/s "
                                    f"({record['seconds']:.2f}s for {record['tasks_timed']})")
            counts = generation.check_counts()
        finally:
            generation.stop()
        for record in records:
            if record["variant"] in counts:
                record["tasker_total_runs"] = counts[record["variant"]]
                record["tasker_expected_runs"] = WARMUP_TASKS + burst * cycles
            results.write("run", record)
        runs += records
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.overhead", __doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, help="tasks per burst (default 2000; quick 300)")
    parser.add_argument("--generations", type=int,
                        help="times the nodes are started afresh (default 4; quick 1)")
    parser.add_argument("--cycles", type=int,
                        help="bursts per variant in each generation (default 8; quick 2)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    n = args.tasks or (300 if args.quick else 2000)
    generations = args.generations or (1 if args.quick else 4)
    cycles = args.cycles or (2 if args.quick else 8)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")

    results = common.Results(BENCH, args, {
        "tasks_per_burst": n, "generations": generations, "cycles": cycles,
        "rounds": generations * cycles, "warmup_tasks": WARMUP_TASKS,
        "variants": variants, "baseline": BASELINE,
        "variant_descriptions": {v: VARIANTS[v].description for v in variants},
        "worker_args": list(common.COMMON_WORKER_ARGS),
        "target_ratio": TARGET_RATIO, "concurrency": 2, "broker": common.REDIS_URL,
    })
    client = common.redis_client()
    ok = False
    try:
        stale = common.purge_stale_unacked(client)
        if stale:
            progress(BENCH, f"removed {stale} unacked messages left by earlier benchmark runs")
        with tempfile.TemporaryDirectory(prefix="tasker-bench-logs-") as logs:
            runs = run_generations(client, Path(logs), results, variants, n, generations,
                                   cycles)
            for summary in summarize(runs, variants):
                results.write("summary", summary)
                paired = summary.get("paired_ratio_to_bare")
                progress(BENCH, f"{summary['variant']}: median "
                                f"{summary['tasks_per_second']['median']:.0f} tasks/s"
                                + (f", {paired['median']:.3f} x bare (median of cycles, "
                                   f"95% CI {paired['ci95'][0]:.3f}-{paired['ci95'][1]:.3f}, "
                                   f"cycles {paired['min']:.3f}-{paired['max']:.3f})"
                                   if paired else ""))
        ok = True
    finally:
        common.cleanup_session_keys(client)
        client.close()
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
