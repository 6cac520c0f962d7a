"""Run every benchmark, each in its own process, then write BENCHMARKS.md.

    python -m bench.run_all            # full suite (about 25 minutes), then BENCHMARKS.md
    python -m bench.run_all --quick    # the whole suite in under 2 minutes; no report
    python -m bench.run_all --only scrape,sampler

Results go to ``bench/results/<bench>-<mode>.jsonl`` (or ``--results-dir``).
A full run regenerates ``BENCHMARKS.md`` with :mod:`bench.report` unless
``--no-report``; a quick run only writes results (``python -m bench.report
--mode quick --output FILE`` shows them).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import DEFAULT_RESULTS_DIR, REPO

#: In the order they run: in-process ones first, worker-node ones last.
BENCHES = ("recording", "scrape", "shared_memory", "sampler", "workflows", "latency",
           "overhead", "soak", "peers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHES}")
    parser.add_argument("--no-report", action="store_true",
                        help="do not regenerate BENCHMARKS.md after a full run")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHES)
    unknown = [b for b in chosen if b not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHES)}")

    results_dir = args.results_dir or Path(os.environ.get("BENCH_RESULTS_DIR")
                                           or DEFAULT_RESULTS_DIR)
    flags = (["--quick"] if args.quick else []) + ["--results-dir", str(results_dir)]
    env = {**os.environ, "BENCH_VIA": "python -m bench.run_all" + (
        "".join(" " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))

    started = time.monotonic()
    failed = []
    for i, bench in enumerate(chosen, 1):
        print(f"=== [{i}/{len(chosen)}] python -m bench.{bench} {' '.join(flags)}", flush=True)
        t0 = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", f"bench.{bench}", *flags], cwd=REPO,
                                 env=env)
        try:
            returncode = child.wait()
        finally:
            if child.poll() is None:  # we are being stopped: stop the benchmark cleanly
                child.terminate()
                child.wait(60)
        took = time.monotonic() - t0
        if returncode != 0:
            failed.append(bench)
            print(f"=== {bench} FAILED (exit {returncode}) after {took:.0f}s", flush=True)
        else:
            print(f"=== {bench} done in {took:.0f}s", flush=True)
    total = time.monotonic() - started
    print(f"=== {len(chosen) - len(failed)}/{len(chosen)} benchmarks done in {total:.0f}s; "
          f"results in {results_dir}", flush=True)

    if not args.quick and not args.no_report and not failed:
        from bench import report

        report.main(["--results-dir", str(results_dir)])
    elif args.quick:
        print("quick mode: BENCHMARKS.md left alone; to read these results: "
              f"python -m bench.report --mode quick --results-dir {results_dir} "
              "--output /tmp/BENCHMARKS-quick.md", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
