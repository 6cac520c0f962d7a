"""Instructions per task of a worker's MainProcess, counted by valgrind (callgrind).

    python -m bench.instructions [--variants bare_client_reuse,tasker] [--tasks 600]
                                 [--rounds 2] [--idle-seconds 10] [--keep DIR] [--quick]

Time-based throughput ratios on a shared machine move by ±5 % from run to
run; an instruction count does not (about 1 % here). Each variant's node runs
under ``valgrind --tool=callgrind`` with instrumentation off; after a warm-up
burst, instrumentation is switched on (``callgrind_control``) for one burst of
``--tasks`` tasks and the MainProcess's main thread (the event loop that
receives, dispatches and acknowledges every message) is read off its dump.

Work that is paid per second, not per task, is measured apart. Under valgrind
a burst takes 20-50× longer than in real time, so whatever a node does once a
second (a blocking ``BRPOP`` on a queue that stays empty times out and is sent
again; timers) lands 20-50× more on each task than it does in real time. So
after its burst each node is counted for ``--idle-seconds`` with no work, and
that rate × the burst's duration is subtracted: *per task* is the burst's
count less the idle rate's share, and the idle rate is reported beside it
(per second, as it is paid). ``--rounds`` repeats each variant's burst and
idle count on the same nodes (the spread says how repeatable the figure is).

Results go to ``bench/results/instructions-{full,quick}.jsonl`` for the report.
Needs valgrind (``apt-get install valgrind``); takes a few minutes.
"""

from __future__ import annotations

import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common
from bench.overhead import VARIANTS, Generation

BENCH = "instructions"
OUT = "callgrind.out.%p"
#: The issue's target: tasker's MainProcess work added per task over bare_client_reuse.
TARGET_ADDED_PER_TASK = 10_000
BASELINE = "bare_client_reuse"


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=300,
                   check=False)


def _main_thread_total(directory: Path, pid: int, number: int) -> int:
    """Instructions in dump ``number`` of the MainProcess's first thread (``.<n>-01``).

    ``callgrind_control -d`` can return before the file is complete, and a
    file read half-written has shown nonsense totals: wait for its ``totals:``
    line and a size that no longer changes.
    """
    path = directory / f"callgrind.out.{pid}.{number}-01"
    deadline = time.monotonic() + 120
    last_size = -1
    while time.monotonic() < deadline:
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            size = -1
        if size > 0 and size == last_size:
            with open(path, errors="replace") as f:
                totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]
            if totals:
                return totals[-1]
        last_size = size
        time.sleep(0.5)
    # No count is not a count of 0: a benchmark figure built on it would be made up.
    raise RuntimeError(f"callgrind wrote no complete dump {path} within 120 s")


def _counted(worker: common.Worker, directory: Path, number: int,
             action: Any) -> tuple[int, float, Any]:
    """(instructions of the main thread, seconds, what ``action`` returned) while counting."""
    _control("-i", "on", str(worker.pid))
    started = time.monotonic()
    result = action()
    seconds = time.monotonic() - started
    _control("-d", str(worker.pid))
    _control("-i", "off", str(worker.pid))
    return _main_thread_total(directory, worker.pid, number), seconds, result


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.instructions", __doc__.split("\n")[0])
    parser.add_argument("--variants", default=f"{BASELINE},tasker,tasker_plain_client")
    parser.add_argument("--tasks", type=int, default=600, help="tasks in each counted burst")
    parser.add_argument("--warmup", type=int, default=300, help="tasks before counting")
    parser.add_argument("--rounds", type=int, default=2, help="counted bursts per variant")
    parser.add_argument("--idle-seconds", type=float, default=10.0,
                        help="seconds of an idle node counted after each burst")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the callgrind dumps here (for callgrind_annotate)")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.warmup, args.rounds, args.idle_seconds = 150, 100, 1, 4.0
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.instructions needs valgrind (callgrind_control)")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    client = common.redis_client()
    common.purge_stale_unacked(client)  # left by a benchmark killed earlier
    results = common.Results(BENCH, args, {
        "variants": variants, "tasks": args.tasks, "warmup": args.warmup,
        "rounds": args.rounds, "idle_seconds": args.idle_seconds})
    work = Path(tempfile.mkdtemp(prefix="tasker-instructions-"))
    generation = Generation(client, variants, "ir", work, args.tasks, args.rounds)
    generation.warmup_tasks = args.warmup
    generation.worker_wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                 "--separate-threads=yes", f"--callgrind-out-file={work}/{OUT}")
    per_task: dict[str, list[float]] = {name: [] for name in variants}
    raw: dict[str, list[float]] = {name: [] for name in variants}
    idle: dict[str, list[float]] = {name: [] for name in variants}
    ok = False
    try:
        generation.start()
        for rnd in range(1, args.rounds + 1):
            for name in variants:
                worker = generation.workers[name]
                dumps = 2 * (rnd - 1)  # each round dumps twice: the burst, then idle
                burst, seconds, drain = _counted(
                    worker, work, dumps + 1,
                    lambda name=name: generation.run_burst(name, args.tasks, timeout=1800.0))
                idle_total, idle_seconds, _ = _counted(
                    worker, work, dumps + 2, lambda: time.sleep(args.idle_seconds))
                if not burst or not idle_total:
                    raise RuntimeError(f"{name}: no callgrind dump of the MainProcess in {work}")
                tasks = drain["tasks_timed"]
                idle_rate = idle_total / idle_seconds
                record = {"variant": name, "round": rnd, "tasks": tasks,
                          "burst_instructions": burst, "burst_seconds": round(seconds, 2),
                          "idle_instructions_per_second": round(idle_rate),
                          "raw_per_task": burst / tasks,
                          "per_task": (burst - idle_rate * seconds) / tasks}
                results.write("burst", record)
                per_task[name].append(record["per_task"])
                raw[name].append(record["raw_per_task"])
                idle[name].append(idle_rate)
                common.progress(BENCH, f"round {rnd} {name}: {record['per_task']:,.0f} "
                                       f"per task ({record['raw_per_task']:,.0f} raw), idle "
                                       f"{idle_rate:,.0f}/s")
        first = variants[0]
        base = statistics.median(per_task[first])
        for name in variants:
            value = statistics.median(per_task[name])
            summary = {"variant": name, "description": VARIANTS[name].description,
                       "per_task": value, "per_task_rounds": per_task[name],
                       "raw_per_task": statistics.median(raw[name]),
                       "idle_per_second": statistics.median(idle[name]),
                       "added_per_task": value - base, "ratio": value / base,
                       "baseline": first}
            if first == BASELINE and VARIANTS[name].app == "tasker":
                summary["target_added_per_task"] = TARGET_ADDED_PER_TASK
                summary["target_met"] = value - base <= TARGET_ADDED_PER_TASK
            results.write("summary", summary)
            print(f"{name:22s} {value:12,.0f} instructions per task in the MainProcess's main "
                  f"thread ({value - base:+,.0f}, {value / base:.3f}× {first}); raw "
                  f"{summary['raw_per_task']:,.0f}; idle {summary['idle_per_second']:,.0f}/s")
        ok = True
    finally:
        generation.stop()
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for name, worker in generation.workers.items():
                for path in glob.glob(str(work / f"callgrind.out.{worker.pid}*-01")):
                    shutil.copy(path, keep / f"{name}.{Path(path).name}")
        shutil.rmtree(work, ignore_errors=True)
        results.close(ok)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
