"""Recording cost: microseconds per task of tasker's signal receivers, in process.

    python -m bench.recording [--quick] [--iterations N] [--repeats R]

Activates recording the way a worker node does (:mod:`tasker.metrics.bootstep`:
``_use_multiprocess_values(dir)``, ``create_metrics()``, ``NodeState.create``,
``recording.activate(Recorder(...))``) on a temporary multiprocess directory,
then sends Celery's task signals the way Celery does (``Signal.send`` with
the keyword arguments Celery's tracer and consumer pass), so every receiver
tasker connects and Celery's own dispatch are measured:

* MainProcess, per task: what :mod:`tasker.receipt` adds to Celery's handler;
* pool process, per successful task: ``task_prerun``, ``task_success`` (which
  tasker does not connect: Celery's tracer then skips it) and ``task_postrun``
  (the task object is tasker's real ``diagnostics.noop`` with
  a request pushed as the worker does, carrying a publish stamp, so the
  queue-wait histogram is observed too).

Also one metric update (``Counter.inc``, ``Histogram.observe`` on a labelled
child) in multiprocess mode and, for reference, in prometheus_client's
default in-memory mode. Figures are the median over repeats of the mean
time per call in a loop (min-max over repeats).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from types import SimpleNamespace
from typing import Any

from bench import common
from bench.common import progress

BENCH = "recording"


def per_call_us(fn: Any, iterations: int, repeats: int) -> dict[str, Any]:
    """Mean microseconds per call of ``fn(i)`` over ``iterations`` calls, ``repeats`` times."""
    import gc

    values = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        fn(iterations)
        values.append((time.perf_counter() - started) / iterations * 1e6)
    return common.spread(values)


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.recording", __doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int,
                        help="calls per repeat (default 20000; quick 3000)")
    parser.add_argument("--repeats", type=int, help="repeats (default 9; quick 3)")
    parser.add_argument("--native-schema", default="5",
                        help="schema of the native histograms a node records (default 5, "
                             "as TASKER_NATIVE_HISTOGRAM_SCHEMA); 'off' records none")
    args = parser.parse_args(argv)
    native_schema = None if args.native_schema == "off" else int(args.native_schema)
    iterations = args.iterations or (3000 if args.quick else 20000)
    repeats = args.repeats or (3 if args.quick else 9)
    results = common.Results(BENCH, args, {"iterations": iterations, "repeats": repeats,
                                           "native_schema": native_schema})
    directory = tempfile.mkdtemp(prefix="tasker-bench-recording-")
    ok = False
    try:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        os.environ.setdefault("TASKER_BROKER_URL", common.REDIS_URL)
        from prometheus_client import Counter, Histogram

        from tasker.metrics.definitions import RUNTIME_BUCKETS

        # In-memory reference metrics: created before multiprocess mode is switched on.
        mem_counter = Counter("bench_mem_counter", "c", ("task", "queue"), registry=None)
        mem_hist = Histogram("bench_mem_hist", "h", ("task", "queue"), buckets=RUNTIME_BUCKETS,
                             registry=None)

        # Activation, as TaskerMetricsStep.__init__ does it.
        from tasker import app
        from tasker.metrics import recording
        from tasker.metrics.definitions import create_metrics
        from tasker.metrics.mmap_files import _use_multiprocess_values
        from tasker.metrics.node_state import FILE_NAME, NodeState
        from tasker.metrics.queue_names import queue_resolver
        from tasker.settings import get_settings

        get_settings()  # read once, as a worker does before it claims its directory
        _use_multiprocess_values(directory)
        metrics = create_metrics()
        path = os.path.join(directory, FILE_NAME)
        shared_state = NodeState.create(path, 60.0, 0.1, time.time(), pool_processes=2)
        # Recorded as in a prefork pool process: billiard numbers it, so its
        # handle writes a slot of its own (the shared slot is measured apart).
        from billiard.process import current_process

        current_process().index = 0
        state = NodeState(path)
        recorder = recording.Recorder(
            metrics, state, "bench@localhost", known_tasks=lambda: app.tasks,
            queue_names=queue_resolver(app), directory=directory,
            native_schema=native_schema)
        recording.activate(recorder)

        mp_counter = Counter("bench_mp_counter", "c", ("task", "queue"), registry=None)
        mp_hist = Histogram("bench_mp_hist", "h", ("task", "queue"), buckets=RUNTIME_BUCKETS,
                            registry=None)

        app.loader.import_default_modules()  # the handler modules, as a worker imports them
        task = app.tasks["diagnostics.noop"]
        delivery_info = {"exchange": "", "routing_key": "celery", "priority": 0,
                         "redelivered": False}
        ids = [str(uuid.uuid4()) for _ in range(iterations)]

        from celery import signals

        # What the MainProcess does per message (tasker.receipt), around a
        # handler that does nothing: Celery's own work is not counted.
        from tasker.receipt import receiving

        message = SimpleNamespace(
            headers={"task": task.name, "id": ids[0], "tasker_correlation_id": str(uuid.uuid4())},
            delivery_info=delivery_info)

        def main_process(n: int) -> None:
            handler = receiving(task.name, lambda *_: None, recorder, False)
            for _ in range(n):
                handler(message, None, None, None, None)

        def pool_process(n: int) -> dict[str, float]:
            """Seconds spent in each receiver over ``n`` tasks (the request push is excluded)."""
            # Celery's tracer skips a signal that has no receivers at all.
            prerun, success, postrun = (
                signal.send if signal.receivers else (lambda **_: None)
                for signal in (signals.task_prerun, signals.task_success, signals.task_postrun))
            clock = time.perf_counter
            t_pre = t_suc = t_post = 0.0
            for i in range(n):
                task_id = ids[i % iterations]
                # What Celery's tracer does around every task: push the request.
                task.push_request(id=task_id, delivery_info=delivery_info, args=(), kwargs={},
                                  tasker_published_at=time.time() - 0.004,
                                  headers=None, eta=None)
                try:
                    t0 = clock()
                    prerun(sender=task, task_id=task_id, task=task, args=(), kwargs={})
                    t1 = clock()
                    success(sender=task, result=None)
                    t2 = clock()
                    postrun(sender=task, task_id=task_id, task=task, args=(), kwargs={},
                            retval=None, state="SUCCESS")
                    t3 = clock()
                finally:
                    task.pop_request()
                t_pre += t1 - t0
                t_suc += t2 - t1
                t_post += t3 - t2
            return {"prerun": t_pre, "success": t_suc, "postrun": t_post}

        def node_state_update(n: int, handle: Any = state) -> None:
            record = handle.record_finished
            for _ in range(n):
                record(0.001, time.time())

        def shared_node_state_update(n: int) -> None:
            node_state_update(n, shared_state)

        def loop(update: Any) -> Any:
            def run(n: int) -> None:
                for _ in range(n):
                    update()
            return run

        mp_c, mp_h = mp_counter.labels("t", "q"), mp_hist.labels("t", "q")
        mem_c, mem_h = mem_counter.labels("t", "q"), mem_hist.labels("t", "q")
        measured: dict[str, dict[str, Any]] = {}

        # Pool process: per repeat, the mean time per task in each receiver.
        pool_process(min(iterations, 1000))  # warm the label caches and the files
        per_repeat: list[dict[str, float]] = []
        for _ in range(repeats):
            import gc

            gc.collect()
            spent = pool_process(iterations)
            per_repeat.append({k: v / iterations * 1e6 for k, v in spent.items()})
        for stage in ("prerun", "success", "postrun"):
            measured[f"pool_{stage}"] = common.spread(r[stage] for r in per_repeat)
        measured["pool_process_per_task"] = common.spread(sum(r.values()) for r in per_repeat)
        for name, what in (("pool_process_per_task",
                            "task_prerun + task_success + task_postrun, dispatch included "
                            "(pool process)"),
                           ("pool_prerun", "task_prerun"),
                           ("pool_success", "task_success (no tasker receiver)"),
                           ("pool_postrun", "task_postrun")):
            results.write("run", {"case": name, "what": what, "iterations": iterations,
                                  "us_per_call": measured[name]})
            progress(BENCH, f"{name}: {measured[name]['median']:.2f} us "
                            f"({measured[name]['min']:.2f}-{measured[name]['max']:.2f})")

        cases = {
            "main_process_per_task": (main_process,
                                      "receipt: correlation, received count (MainProcess)", 5),
            "node_state_record_finished": (node_state_update,
                                           "NodeState.record_finished() in a pool process "
                                           "(its own slot, no lock; part of task_postrun)", 1),
            "node_state_record_finished_shared": (
                shared_node_state_update,
                "NodeState.record_finished() on the shared slot (flock; the MainProcess, "
                "solo and thread pools)", 1),
            "counter_inc_multiprocess": (loop(mp_c.inc), "Counter.inc(), multiprocess mode", 5),
            "histogram_observe_multiprocess": (loop(lambda: mp_h.observe(0.003)),
                                               "Histogram.observe(), multiprocess mode", 5),
            "counter_inc_memory": (loop(mem_c.inc), "Counter.inc(), in-memory mode", 5),
            "histogram_observe_memory": (loop(lambda: mem_h.observe(0.003)),
                                         "Histogram.observe(), in-memory mode", 5),
        }
        for name, (fn, what, scale) in cases.items():
            fn(min(iterations, 1000))  # warm the label caches and the files
            measured[name] = per_call_us(fn, iterations * scale, repeats)
            results.write("run", {"case": name, "what": what, "iterations": iterations * scale,
                                  "us_per_call": measured[name]})
            progress(BENCH, f"{name}: {measured[name]['median']:.2f} us "
                            f"({measured[name]['min']:.2f}-{measured[name]['max']:.2f})")
        recording.deactivate()
        del current_process().index

        main_us, pool_us = measured["main_process_per_task"], measured["pool_process_per_task"]
        summary = {
            "main_process_us_per_task": main_us,
            "pool_process_us_per_task": pool_us,
            "total_us_per_task": main_us["median"] + pool_us["median"],
            "pool_process_us_by_receiver": {
                stage: measured[f"pool_{stage}"] for stage in ("prerun", "success", "postrun")},
            "node_state_record_finished_us": measured["node_state_record_finished"],
            "node_state_record_finished_shared_us":
                measured["node_state_record_finished_shared"],
            "counter_inc_us": {"multiprocess": measured["counter_inc_multiprocess"],
                               "memory": measured["counter_inc_memory"]},
            "histogram_observe_us": {"multiprocess": measured["histogram_observe_multiprocess"],
                                     "memory": measured["histogram_observe_memory"]},
        }
        results.write("summary", summary)
        progress(BENCH, f"per task: MainProcess {main_us['median']:.1f} us, "
                        f"pool process {pool_us['median']:.1f} us")
        ok = True
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        results.close(ok)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
