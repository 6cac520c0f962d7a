"""Instructions per task of a worker's MainProcess, counted by valgrind (callgrind).

    python -m bench.instructions [--variants bare_client_reuse,tasker] [--tasks 600]

Time-based throughput ratios on a shared machine move by ±5 % from run to
run; an instruction count does not (about 1 % here). Each variant's node runs
under ``valgrind --tool=callgrind`` with instrumentation off; after a warm-up
burst, instrumentation is switched on (``callgrind_control``) for one burst of
``--tasks`` tasks and the MainProcess's main thread (the event loop that
receives, dispatches and acknowledges every message) is read off its dump.
Prints instructions per task for each variant and each one's difference from
the first. Needs valgrind (a diagnostic: not run by ``bench.run_all``);
takes a few minutes (everything runs 20-50× slower under valgrind).
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import common
from bench.overhead import VARIANTS, Generation

OUT = "callgrind.out.%p"


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], capture_output=True, text=True, timeout=300,
                   check=False)


def _main_thread_total(directory: Path, pid: int) -> int:
    """Instructions in the dump of the MainProcess's first thread (``-01``)."""
    total = 0
    for path in glob.glob(str(directory / f"callgrind.out.{pid}*-01")):
        with open(path, errors="replace") as f:
            for line in f:
                if line.startswith(("totals:", "summary:")):
                    total = max(total, int(line.split()[1]))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions")
    parser.add_argument("--variants", default="bare_client_reuse,tasker")
    parser.add_argument("--tasks", type=int, default=600, help="tasks in the counted burst")
    parser.add_argument("--warmup", type=int, default=300, help="tasks before counting")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the callgrind dumps here (for callgrind_annotate)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("bench.instructions needs valgrind (callgrind_control)")
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    client = common.redis_client()
    common.purge_stale_unacked(client)  # left by a benchmark killed earlier
    work = Path(tempfile.mkdtemp(prefix="tasker-instructions-"))
    generation = Generation(client, variants, "ir", work, args.tasks, 1)
    generation.warmup_tasks = args.warmup
    generation.worker_wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                 "--separate-threads=yes", f"--callgrind-out-file={work}/{OUT}")
    per_task: dict[str, float] = {}
    try:
        generation.start()
        for name in variants:
            worker = generation.workers[name]
            _control("-i", "on", str(worker.pid))
            drain = generation.run_burst(name, args.tasks, timeout=1800.0)
            _control("-d", str(worker.pid))
            _control("-i", "off", str(worker.pid))
            total = _main_thread_total(work, worker.pid)
            if not total:
                raise RuntimeError(f"{name}: no callgrind dump of the MainProcess in {work}")
            per_task[name] = total / drain["tasks_timed"]
    finally:
        generation.stop()
        if args.keep:
            keep = Path(args.keep)
            keep.mkdir(parents=True, exist_ok=True)
            for name, worker in generation.workers.items():
                for path in glob.glob(str(work / f"callgrind.out.{worker.pid}*-01")):
                    shutil.copy(path, keep / f"{name}.{Path(path).name}")
        shutil.rmtree(work, ignore_errors=True)
    first = per_task[variants[0]]
    for name, value in per_task.items():
        print(f"{name:22s} {value:12,.0f} instructions per task in the MainProcess's main "
              f"thread ({value - first:+,.0f}, {value / first:.3f}× {variants[0]})")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
