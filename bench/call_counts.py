"""Python calls per task in a worker's MainProcess (a diagnostic, ``--include bench.call_counts``).

    python -m bench.call_counts [--variants bare_client_reuse,tasker] [--tasks 2000] [--top 40]

Where :mod:`bench.instructions` says how much more a node's MainProcess does
per task, this says what: each variant's node counts the Python functions
(and C functions called from Python) its main thread calls during one burst
(``sys.setprofile`` switched on by SIGUSR2 and off by a second one, the counts
written to ``$BENCH_CALL_COUNTS_DIR/<pid>.json``), and the functions whose
calls per task differ most from the first variant's are printed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_counts: collections.Counter[str] = collections.Counter()
_on = False


def _profile(frame: Any, event: str, arg: Any) -> None:
    if event == "call":
        code = frame.f_code
        _counts[f"{code.co_filename.rsplit('site-packages/', 1)[-1]}:{code.co_firstlineno}"
                f":{code.co_name}"] += 1
    elif event == "c_call":
        _counts[f"C:{getattr(arg, '__qualname__', repr(arg))}"] += 1
    elif event == "c_exception":  # a C function raised (caught or not)
        _counts[f"raised in C:{getattr(arg, '__qualname__', repr(arg))}"] += 1


def _toggle(signum: int, frame: Any) -> None:
    global _on
    if threading.current_thread() is not threading.main_thread():
        return
    if not _on:
        _counts.clear()
        sys.setprofile(_profile)
        _on = True
        return
    sys.setprofile(None)
    _on = False
    directory = os.environ.get("BENCH_CALL_COUNTS_DIR")
    if directory:
        with open(os.path.join(directory, f"{os.getpid()}.json"), "w") as f:
            json.dump(dict(_counts), f)


if os.environ.get("BENCH_CALL_COUNTS_DIR"):  # only in the nodes this tool starts
    signal.signal(signal.SIGUSR2, _toggle)


def _with_include(args: tuple[str, ...]) -> tuple[str, ...]:
    """``args`` with this module added to ``--include`` (one option: a second one replaces it)."""
    out = list(args)
    if "--include" in out:
        i = out.index("--include") + 1
        out[i] = f"{out[i]},bench.call_counts"
        return tuple(out)
    return (*out, "--include", "bench.call_counts")


def main(argv: list[str] | None = None) -> int:
    from bench import common
    from bench.overhead import VARIANTS, Generation

    parser = argparse.ArgumentParser(prog="python -m bench.call_counts")
    parser.add_argument("--variants", default="bare_client_reuse,tasker")
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--valgrind", action="store_true",
                        help="run the nodes under valgrind (as bench.instructions does), "
                             "for what changes with a 20-50x slower process")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    work = Path(tempfile.mkdtemp(prefix="tasker-calls-"))
    os.environ["BENCH_CALL_COUNTS_DIR"] = str(work)
    for name in variants:  # every node loads this module; the same for all, so it cancels out
        v = VARIANTS[name]
        VARIANTS[name] = type(v)(**{**v.__dict__, "worker_args": _with_include(v.worker_args)})
    client = common.redis_client()
    generation = Generation(client, variants, "calls", work, args.tasks, 1)
    if args.valgrind:
        generation.worker_wrapper = ("valgrind", "--tool=callgrind", "--instr-atstart=no",
                                     f"--callgrind-out-file={work}/callgrind.out.%p")
        generation.warmup_tasks = 300
    per_task: dict[str, dict[str, float]] = {}
    try:
        generation.start()
        for name in variants:
            worker = generation.workers[name]
            os.kill(worker.pid, signal.SIGUSR2)
            time.sleep(0.5)
            drain = generation.run_burst(name, args.tasks, timeout=1800.0)
            os.kill(worker.pid, signal.SIGUSR2)
            path = work / f"{worker.pid}.json"
            for _ in range(100):
                if path.exists():
                    break
                time.sleep(0.1)
            time.sleep(0.3)
            counts = json.loads(path.read_text())
            per_task[name] = {k: v / drain["tasks_timed"] for k, v in counts.items()}
    finally:
        generation.stop()
    first = per_task[variants[0]]
    for name in variants[1:]:
        other = per_task[name]
        total = sum(other.values()) - sum(first.values())
        print(f"\n{name} - {variants[0]}: {total:+.1f} calls per task")
        keys = sorted(set(first) | set(other),
                      key=lambda k: -abs(other.get(k, 0) - first.get(k, 0)))
        for k in keys[:args.top]:
            print(f"{other.get(k, 0) - first.get(k, 0):+9.2f}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
