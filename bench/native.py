"""Native histograms: scrape time and bytes with and without them.

    python -m bench.native [--quick] [--processes 8] [--names 200] [--observations 20]

Builds a node's multiprocess directory the way a worker fills it: for each of
``--processes`` pool processes (tasker's value class with that process's
identity), ``--observations`` runtimes and queue waits per task name, drawn
from a log-normal spread (median 50 ms), recorded through the same recorder
children a node uses, once with native histograms off and once on (schema
5). Then it times what the node does at a scrape: read and merge the files
(``MetricStore``) and write the text exposition (what a Prometheus without
native histograms gets) or the protobuf one (what a Prometheus with them asks
for), and reports the bytes of each.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
from typing import Any

from bench import common
from bench.common import progress

BENCH = "native"


def _fill(directory: str, processes: int, names: int, observations: int,
          native: bool) -> None:
    from prometheus_client import values

    from tasker.metrics import recording
    from tasker.metrics.definitions import create_metrics
    from tasker.metrics.node_state import FILE_NAME, NodeState
    from tasker.metrics.values import multiprocess_value_class

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    state = NodeState.create(os.path.join(directory, FILE_NAME), 60.0, 0.1, time.time())
    rng = random.Random(1)
    for p in range(processes):
        identity = f"{100000 + p}-1"
        cls = multiprocess_value_class(lambda identity=identity: identity)
        values.ValueClass = cls
        metrics = create_metrics()
        recorder = recording.Recorder(metrics, state, "bench@localhost",
                                      known_tasks=lambda: {}, queue_names=lambda e, r: "celery",
                                      directory=directory, native_schema=5 if native else None)
        for n in range(names):
            task = f"bench.task{n:04d}"
            runtime = recorder.child(metrics.runtime, task, "celery")
            wait = recorder.child(metrics.queue_wait, task, "celery")
            started = recorder.child(metrics.started, task, "celery")
            for _ in range(observations):
                started.inc()
                runtime.observe(rng.lognormvariate(-3.0, 0.8))
                wait.observe(rng.lognormvariate(-5.0, 1.0))
        cls.close_all_files()
    state.close()


def _scrape(directory: str, repeats: int) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from tasker.metrics.exposition import TextExposition
    from tasker.metrics.protobuf import encode
    from tasker.metrics.store import MetricStore

    store = MetricStore(directory, is_alive=lambda owner: True)
    reading = store.read()  # the first, cold read: keys parsed once
    holder: dict[str, Any] = {}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(type("Families", (), {"collect": lambda self: holder["families"]})())
    exposition = TextExposition()

    def text() -> bytes:
        reading = store.read()
        holder["families"] = reading.families()
        return exposition.render(registry)

    def protobuf() -> bytes:
        reading = store.read()
        return encode(reading.families(), reading.native_histograms())

    out: dict[str, Any] = {"native_histograms": len(reading.native_histograms())}
    for name, fn in (("text", text), ("protobuf", protobuf)):
        body = fn()  # warm the caches
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            body = fn()
            times.append((time.perf_counter() - t0) * 1000)
        out[name] = {"bytes": len(body), "ms": common.spread(times),
                     "ms_median": statistics.median(times)}
    return out


def main() -> int:
    parser = common.base_parser("python -m bench.native", __doc__.split("\n")[0])
    parser.add_argument("--processes", type=int, default=None)
    parser.add_argument("--names", type=int, default=None)
    parser.add_argument("--observations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    processes = args.processes or (2 if args.quick else 8)
    names = args.names or (20 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 9)
    params = {"processes": processes, "names": names, "observations": args.observations,
              "repeats": repeats}
    results = common.Results(BENCH, args, params)
    ok = False
    summary: dict[str, Any] = {**params}
    try:
        for native in (False, True):
            directory = tempfile.mkdtemp(prefix="tasker-bench-native-")
            try:
                _fill(directory, processes, names, args.observations, native)
                found = _scrape(directory, repeats)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            label = "native" if native else "classic"
            summary[label] = found
            results.write("run", {"case": label, **found})
            progress(BENCH, f"{label}: text {found['text']['bytes']:,} B in "
                            f"{found['text']['ms_median']:.1f} ms; protobuf "
                            f"{found['protobuf']['bytes']:,} B in "
                            f"{found['protobuf']['ms_median']:.1f} ms "
                            f"({found['native_histograms']} native histograms)")
        results.write("summary", summary)
        ok = True
    finally:
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
