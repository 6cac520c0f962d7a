"""Soak: many tasks through one node with recycling and failures; does anything grow?

    python -m bench.soak [--quick] [--tasks 100000] [--max-tasks-per-child 50]
                         [--fail-every 20]

One tasker node (prefork ``-c 2``, ``--max-tasks-per-child``, Redis) runs
``diagnostics.noop`` with every Nth task ``diagnostics.fail``. After a warm-up,
then half-way, then at the end, once every published task has finished, the
benchmark reads the MainProcess's resident memory, the number of files in the
node's multiprocess directory and the time of a ``/metrics`` scrape. The
target: each is flat within 10 % from start to end, and the totals on
``/metrics`` equal what was published.

The machine's speed drifts by tens of percent over minutes (see the
throughput benchmark), which moves a 3-5 ms scrape as much as any growth
would. So every scrape is followed by a fixed reference workload of the same
kind (``generate_latest`` of a fixed in-process registry, a few ms of CPU),
and the verdict on the scrape uses scrape time ÷ reference time; the raw
times are reported too.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Variant, progress

BENCH = "soak"
TOLERANCE = 0.10
SCRAPES = 50


def scrape(port: int) -> tuple[float, dict[tuple[str, frozenset], float]]:
    """One ``/metrics`` scrape: (milliseconds, parsed samples)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        body = response.read().decode()
    took = (time.perf_counter() - started) * 1e3
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return took, samples


def reference_workload() -> Callable[[], bytes]:
    """Fixed CPU work like a scrape's: formatting the text of a fixed registry."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    registry = CollectorRegistry()
    tasks = Counter("ref_tasks", "Reference.", ["task", "queue"], registry=registry)
    runtime = Histogram("ref_runtime_seconds", "Reference.", ["task"], registry=registry)
    for i in range(20):
        tasks.labels(f"t{i}", "celery").inc(i)
        runtime.labels(f"t{i}").observe(0.01 * i)
    return lambda: generate_latest(registry)


def total(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def finished(samples: dict[tuple[str, frozenset], float]) -> tuple[int, int]:
    return (int(total(samples, "tasker_tasks_succeeded_total")),
            int(total(samples, "tasker_tasks_failed_total")))


def wait_finished(worker: common.Worker, expected: int, timeout: float) -> None:
    last_report = [time.monotonic()]

    def check() -> tuple[bool, str]:
        assert worker.metrics_port is not None
        try:
            done = sum(finished(scrape(worker.metrics_port)[1]))
        except OSError:  # the node is still starting: its endpoint is not up yet
            done = 0
        if time.monotonic() - last_report[0] > 30:
            progress(BENCH, f"  {done:,}/{expected:,} finished")
            last_report[0] = time.monotonic()
        return done >= expected, f"{done}/{expected} tasks finished"

    common.wait_until(worker, check, timeout, interval=1.0)


def checkpoint(worker: common.Worker, directory: Path, phase: str, published: int
               ) -> dict[str, Any]:
    import psutil

    assert worker.metrics_port is not None
    time.sleep(2.0)  # let the housekeeping thread fold the last exits in
    times, reference_times, samples, file_counts = [], [], {}, []
    reference = reference_workload()
    for _ in range(SCRAPES):
        # A fresh pool process creates its files at its first write, so the
        # count moves between scrapes: the largest one is reported.
        file_counts.append(sum(1 for p in directory.rglob("*") if p.is_file()))
        took, samples = scrape(worker.metrics_port)
        times.append(took)
        started = time.perf_counter()
        reference()
        reference_times.append((time.perf_counter() - started) * 1e3)
    succeeded, failed = finished(samples)
    exits = int(total(samples, "tasker_worker_process_exits_total"))
    files = max(file_counts)
    record = {"phase": phase, "published": published, "finished": succeeded + failed,
              "succeeded": succeeded, "failed": failed,
              "rss_bytes": psutil.Process(worker.pid).memory_info().rss, "files": files,
              "scrape_ms": common.spread(times),
              "reference_ms": common.spread(reference_times),
              "scrape_relative": common.spread(t / r for t, r in zip(times, reference_times)),
              "pool_processes_started": exits + 2,
              "process_exits": exits}
    progress(BENCH, f"{phase}: {record['finished']:,} finished, rss "
                    f"{record['rss_bytes'] / 2**20:.1f} MiB, {files} files, scrape "
                    f"{record['scrape_ms']['median']:.2f} ms ("
                    f"{record['scrape_relative']['median']:.2f}x the reference), "
                    f"{exits} pool process exits")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.soak", __doc__)
    parser.add_argument("--tasks", type=int, default=None,
                        help="tasks after the warm-up (default 100000, quick 300)")
    parser.add_argument("--max-tasks-per-child", type=int, default=50)
    parser.add_argument("--fail-every", type=int, default=20,
                        help="every Nth task fails (default 20: 5 %%)")
    args = parser.parse_args(argv)
    tasks = args.tasks or (300 if args.quick else 100_000)
    warmup = 50 if args.quick else 2000
    results = common.Results(BENCH, args, {"tasks": tasks, "warmup": warmup,
                                           "max_tasks_per_child": args.max_tasks_per_child,
                                           "fail_every": args.fail_every})
    client = common.redis_client()
    queue = f"{common.SESSION}-{BENCH}"
    ok = False
    worker = None
    try:
        with tempfile.TemporaryDirectory(prefix="tasker-bench-") as tmp:
            variant = Variant("tasker", "tasker", "tasker with metrics")
            worker = common.start_worker(variant, queue, f"{queue}-w", Path(tmp), [
                f"--max-tasks-per-child={args.max_tasks_per_child}"])
            directory = Path(tmp) / f"{queue}-w.metrics"
            published = 0
            checkpoints = []
            halves = [tasks // 2, tasks - tasks // 2]
            for phase, count in (("start", warmup), ("middle", halves[0]), ("end", halves[1])):
                progress(BENCH, f"publishing {count:,} tasks ({phase})")
                common.publish("tasker", queue, count=count, fail_every=args.fail_every,
                               timeout=1800)
                published += count
                wait_finished(worker, published, timeout=120 + count / 20)
                checkpoints.append(checkpoint(worker, directory, phase, published))
            worker.stop()
            first, last = checkpoints[0], checkpoints[-1]
            growth = {"rss": last["rss_bytes"] / first["rss_bytes"],
                      "files": last["files"] / max(1, first["files"]),
                      "scrape_relative": (last["scrape_relative"]["median"]
                                          / first["scrape_relative"]["median"])}
            # Raw scrape time: reported, not judged (it moves with the machine's speed).
            raw_scrape_growth = last["scrape_ms"]["median"] / first["scrape_ms"]["median"]
            expected_failed = (warmup // args.fail_every + halves[0] // args.fail_every
                               + halves[1] // args.fail_every) if args.fail_every else 0
            exact = (last["failed"] == expected_failed
                     and last["succeeded"] == published - expected_failed)
            flat = all(g <= 1 + TOLERANCE for g in growth.values())
            summary = {
                "tasks": published, "max_tasks_per_child": args.max_tasks_per_child,
                "mix": (f"`diagnostics.noop`, every {args.fail_every}th task "
                        "`diagnostics.fail`" if args.fail_every else "`diagnostics.noop`"),
                "scrapes": SCRAPES, "checkpoints": checkpoints, "growth": growth,
                "raw_scrape_growth": raw_scrape_growth,
                "tolerance": TOLERANCE, "flat": flat, "totals_exact": exact,
                "counted": {"succeeded": last["succeeded"], "failed": last["failed"]},
                "expected_failed": expected_failed,
                "meaning": _meaning(growth, flat, last, args.max_tasks_per_child),
            }
            results.write("summary", summary)
            progress(BENCH, f"end ÷ start: rss {growth['rss']:.3f}×, files "
                            f"{growth['files']:.2f}×, scrape ÷ reference "
                            f"{growth['scrape_relative']:.2f}× (raw {raw_scrape_growth:.2f}×); "
                            f"totals {'exact' if exact else 'NOT exact'}")
        ok = True
    finally:
        if worker is not None:
            worker.stop()
        results.close(ok)
        common.delete_queue_keys(client, queue)
        common.cleanup_session_keys(client)
        client.close()
    progress(BENCH, f"results in {results.path}")
    return 0


def _meaning(growth: dict[str, float], flat: bool, last: dict[str, Any], per_child: int) -> str:
    text = (f"{last['process_exits']:,} pool processes were replaced (one every "
            f"{per_child} tasks). ")
    if flat:
        text += ("The MainProcess's memory, the directory and the scrape stayed flat: "
                 "the dead processes' files are folded into the node's archive and deleted, "
                 "so a node that recycles all day scrapes as fast at night as in the morning.")
    else:
        grew = [k for k, g in growth.items() if g > 1 + TOLERANCE]
        text += (f"**{', '.join(grew)} grew by more than {TOLERANCE:.0%}** between the start "
                 "and the end; see the table for where.")
    return text


if __name__ == "__main__":
    raise SystemExit(main())
