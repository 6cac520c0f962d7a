"""Smoke test of the benchmark suite: the quick mode runs to the end and writes results.

It asserts nothing about the figures (the machine is shared and noisy); it
only checks that every benchmark completed and wrote JSON lines that parse.
Results go to a temporary directory, so ``bench/results/`` is left alone.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHES = ("recording", "scrape", "shared_memory", "sampler", "workflows", "latency",
           "overhead", "soak", "peers")


def _redis_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=2):
            return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(not _redis_reachable(), reason="the benchmarks need Redis on 127.0.0.1:6379")
def test_quick_suite_completes_and_writes_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TASKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    # Its own Redis database, so a full benchmark run (db 12 by default) can go on
    # at the same time: the throughput benchmark needs kombu's unacked hash to itself.
    env["BENCH_REDIS_DB"] = os.environ.get("BENCH_SMOKE_REDIS_DB", "14")
    env.pop("BENCH_REDIS_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--quick", "--results-dir", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    for bench in BENCHES:
        path = tmp_path / f"{bench}-quick.jsonl"
        assert path.exists(), f"{bench} wrote no results"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kinds = [r["kind"] for r in records]
        assert kinds[0] == "meta" and kinds[-1] == "end", (bench, kinds)
        assert records[-1]["ok"] is True, bench
        assert "summary" in kinds, bench
