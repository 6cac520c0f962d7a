"""tasker against the tools people use today: Flower and celery-exporter, same workload.

    python -m bench.peers [--quick] [--tasks 2400]

Users choose between tasker, Flower (with task events, ``-E``) and
celery-exporter (PyPI ``prometheus-exporter-celery``, also fed by events).
This runs all three side by side on the same Redis database and the same
messages, and sets what each reports against what the benchmark itself knows
(ground truth: it published every message, chose which fail and how long
each sleeps, and kills a known task's process):

1. **Counts, runtimes.** One tasker node with ``-E`` (so the event-based tools
   see exactly what tasker sees) runs ``--tasks`` tasks: 1 in 12
   ``diagnostics.fail``, the rest ``diagnostics.sleep`` for known durations
   (2-40 ms). Received / succeeded / failed counts, how many failed tasks
   have a runtime, and runtime percentiles (from each tool's histogram, as
   ``histogram_quantile`` would, against the durations asked for).
2. **Processing rate before and after a stop.** tasker's
   ``processing_rate`` during the run and one rate window after the last
   task (the node runs with ``TASKER_RATE_WINDOW=10``); the others publish
   counters only (a rate is Prometheus's ``rate()`` over them).
3. **Queue depth over Redis priorities.** A second node (``-c 1``,
   prefetch 1) is busy with a long task while ``--depth`` messages with
   priorities 0-9 wait in its queue; ground truth is ``LLEN`` summed over
   every priority list of the queue. tasker's sampler (one round asked for
   as beat would), Flower's ``/api/queues/length`` and celery-exporter's
   ``celery_queue_length``.
4. **SIGKILL.** That long task's pool process is killed: ground truth is
   ``WorkerLostError`` and one lost process. What each tool says.
5. **Throughput and CPU.** With Flower and celery-exporter running,
   :mod:`bench.overhead`'s paired bursts of no-op tasks on bare Celery,
   bare Celery with ``-E`` (what both peers need), bare Celery with tasker's
   kombu change, and tasker; node CPU per task (MainProcess + pool), and
   Flower's and celery-exporter's own CPU per task over the ``-E`` bursts.

celery-exporter pins ``prometheus_client`` 0.21 and ``redis`` < 6 (so Celery
5.5 there: kombu 5.7 refuses redis-py 5), which would replace tasker's, so it
runs from a virtualenv of its own
(``$BENCH_CELERY_EXPORTER_VENV``, default ``~/.cache/tasker/celery-exporter``;
``--install`` creates it; ``.ci/run`` does too). Flower comes from the
``bench`` extra.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from bench import common
from bench.common import Variant, progress

BENCH = "peers"

#: The celery-exporter release measured (the PyPI package prometheus-exporter-celery). It
#: requires redis-py < 6, which kombu 5.7 refuses (VersionMismatch), so its Celery is the
#: newest that accepts it (5.5); kombu's Redis transport also imports ``packaging``, which
#: nothing there requires.
EXPORTER_PACKAGES = ("prometheus-exporter-celery==0.11.2", "celery==5.5.3", "kombu<5.6",
                     "packaging")
EXPORTER_VENV = Path(os.environ.get("BENCH_CELERY_EXPORTER_VENV",
                                    "~/.cache/tasker/celery-exporter")).expanduser()
#: kombu's separator between a queue's name and its priority level in Redis list names.
PRIORITY_SEP = "\x06\x16"
FAIL_EVERY = 12
RATE_WINDOW = 10.0

TASKER_EVENTS = Variant("tasker_events", "tasker", "tasker with task events (-E)",
                        worker_args=("-E",), env=(("TASKER_RATE_WINDOW", str(RATE_WINDOW)),))
THROUGHPUT_VARIANTS = ("bare", "bare_events", "bare_client_reuse", "tasker")


# ------------------------------------------------------------------ processes


def exporter_python() -> Path:
    return EXPORTER_VENV / "bin" / "python"


def install_exporter() -> None:
    """Create celery-exporter's own virtualenv (see the module doc)."""
    subprocess.run([sys.executable, "-m", "venv", str(EXPORTER_VENV)], check=True)
    subprocess.run([str(exporter_python()), "-m", "pip", "install", "--quiet",
                    *EXPORTER_PACKAGES], check=True)


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    out = subprocess.run([str(exporter_python()), "-c",
                          "from importlib.metadata import version as v;"
                          "print(v('prometheus-exporter-celery'), v('celery'), "
                          "v('prometheus_client'))"],
                         capture_output=True, text=True, check=False)
    exporter, exporter_celery, exporter_client = (out.stdout.split() + [None] * 3)[:3]
    return {"tasker": of("tasker"), "celery": of("celery"), "kombu": of("kombu"),
            "flower": of("flower"), "celery_exporter": exporter,
            "celery_exporter_celery": exporter_celery,
            "celery_exporter_prometheus_client": exporter_client}


def _start(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(argv, env=env, cwd=common.REPO, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _http_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def _wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - a tool still starting up
            last_error = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what} (last error: {last_error})")


def _poll_value(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float) -> Any:
    """``read()`` until ``done(value)`` or time runs out; the last value either way."""
    deadline = time.monotonic() + timeout
    value = None
    while True:
        try:
            value = read()
        except Exception:  # noqa: BLE001 - not there yet
            value = None
        if (value is not None and done(value)) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


# --------------------------------------------------------------- reading tools


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(_http_text(url))
            for s in family.samples]


def total(samples: Samples, metric: str, /, **labels: str) -> float:
    return sum(v for n, lab, v in samples
               if n == metric and all(lab.get(k) == want for k, want in labels.items()))


def label_values(samples: Samples, metric: str, label: str, /, **labels: str) -> list[str]:
    return sorted({lab.get(label, "") for n, lab, v in samples if n == metric and v > 0
                   and all(lab.get(k) == want for k, want in labels.items())})


def histogram_quantile(q: float, samples: Samples, metric: str, /,
                       **labels: str) -> float | None:
    """What PromQL's ``histogram_quantile`` gives for one histogram summed over its series."""
    buckets: dict[float, float] = {}
    for n, lab, v in samples:
        if n == f"{metric}_bucket" and all(lab.get(k) == want for k, want in labels.items()):
            le = float(lab["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    if not buckets:
        return None
    bounds = sorted(buckets)
    count = buckets[bounds[-1]]
    if count == 0:
        return None
    rank = q * count
    lower, below = 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, buckets[bound]
    return None


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------- the run


class Peers:
    """Flower, celery-exporter and the tasker nodes they watch, on one Redis database."""

    def __init__(self, work: Path, queues: list[str]) -> None:
        self.work = work
        self.env = common.base_env()
        self.flower_port = common.free_port()
        self.exporter_port = common.free_port()
        self.flower: subprocess.Popen[bytes] | None = None
        self.exporter: subprocess.Popen[bytes] | None = None
        self.queues = queues

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}"

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.exporter_port}/metrics"

    def start(self) -> None:
        env = {**self.env, "FLOWER_UNAUTHENTICATED_API": "true"}
        self.flower = _start([sys.executable, "-m", "celery", "-A", "tasker", "flower",
                              f"--port={self.flower_port}", "--address=127.0.0.1"],
                             self.work / "flower.log", env)
        self.exporter = _start(
            [str(exporter_python()), "-c", "import sys; from src.cli import cli; sys.exit(cli())",
             "--broker-url", common.REDIS_URL, "--host", "127.0.0.1",
             "--port", str(self.exporter_port), "--log-level", "WARNING",
             "--queues", ",".join(self.queues)],
            self.work / "celery-exporter.log", {**self.env, "PYTHONPATH": ""})
        _wait(lambda: _http_text(f"{self.flower_url}/metrics"), 60, "Flower")
        _wait(lambda: _http_text(self.exporter_url), 60, "celery-exporter")

    def stop(self) -> None:
        _stop(self.flower)
        _stop(self.exporter)

    def cpu(self) -> dict[str, float]:
        out = {}
        for name, proc in (("flower", self.flower), ("celery_exporter", self.exporter)):
            try:
                times = psutil.Process(proc.pid).cpu_times() if proc else None
                out[name] = times.user + times.system if times else float("nan")
            except psutil.Error:
                out[name] = float("nan")
        return out

    def flower_tasks(self) -> dict[str, Any]:
        return common.http_json(f"{self.flower_url}/api/tasks?limit=100000", timeout=30)


def _tasker_app() -> Any:
    for key in ("TASKER_BROKER_URL", "TASKER_DATABASE_URL"):
        os.environ.setdefault(key, common.base_env()[key])
    from tasker import app

    return app


def _durations(n: int) -> list[float | None]:
    """The workload: None for a failing task, else the seconds that task sleeps (2-40 ms)."""
    return [None if i % FAIL_EVERY == FAIL_EVERY - 1 else round(0.002 * (1 + i % 20), 3)
            for i in range(n)]


def counts_and_runtimes(peers: Peers, node: common.Worker, tasks: int) -> dict[str, Any]:
    app = _tasker_app()
    plan = _durations(tasks)
    with app.producer_or_acquire() as producer:
        for seconds in plan:
            if seconds is None:
                app.send_task("diagnostics.fail", args=["peers: asked to fail"],
                              queue=node.queue, producer=producer)
            else:
                app.send_task("diagnostics.sleep", args=[seconds], queue=node.queue,
                              producer=producer)
    metrics_url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    json_url = f"http://127.0.0.1:{node.metrics_port}/metrics.json"
    rate_during: list[float] = []

    def all_done() -> bool:
        snap = common.http_json(json_url)
        rate_during.append(snap.get("processing_rate") or 0.0)
        return (snap.get("succeeded") or 0) + (snap.get("failed") or 0) >= tasks

    _wait(all_done, max(120.0, tasks / 10), "the tasker node to finish the workload", 1.0)
    finished = time.monotonic()
    failures = sum(1 for s in plan if s is None)
    succeeded = tasks - failures
    truth = {"received": tasks, "succeeded": succeeded, "failed": failures,
             "failed_with_runtime": failures}
    sleeps = [s for s in plan if s is not None]
    truth_runtime = {q: percentile(sleeps, q) for q in (0.5, 0.95, 0.99)}

    # The event-based tools catch up on their own time; give them until they agree.
    def exporter_read() -> Samples:
        return scrape(peers.exporter_url)

    exp = _poll_value(exporter_read, lambda s: total(s, "celery_task_succeeded_total")
                      + total(s, "celery_task_failed_total") >= tasks, 60)
    flower_metrics = _poll_value(
        lambda: scrape(f"{peers.flower_url}/metrics"),
        lambda s: total(s, "flower_events_total", type="task-succeeded")
        + total(s, "flower_events_total", type="task-failed") >= tasks, 60)
    flower_api = peers.flower_tasks()
    tk = scrape(metrics_url)

    def runtime_of(samples: Samples, metric: str, /,
                   **labels: str) -> dict[float, float | None]:
        return {q: histogram_quantile(q, samples, metric, **labels) for q in (0.5, 0.95, 0.99)}

    failed_api = [t for t in flower_api.values() if t.get("state") == "FAILURE"
                  and t.get("name") == "diagnostics.fail"]
    tools = {
        "tasker": {
            "received": total(tk, "tasker_tasks_received_total", queue=node.queue),
            "succeeded": total(tk, "tasker_tasks_succeeded_total", queue=node.queue),
            "failed": total(tk, "tasker_tasks_failed_total", queue=node.queue),
            "failed_with_runtime": total(tk, "tasker_task_runtime_seconds_count",
                                         task="diagnostics.fail"),
            "runtime": runtime_of(tk, "tasker_task_runtime_seconds", task="diagnostics.sleep"),
        },
        "flower": {
            "received": total(flower_metrics, "flower_events_total", type="task-received"),
            "succeeded": total(flower_metrics, "flower_events_total", type="task-succeeded"),
            "failed": total(flower_metrics, "flower_events_total", type="task-failed"),
            "failed_with_runtime": sum(1 for t in failed_api if t.get("runtime") is not None),
            "runtime": runtime_of(flower_metrics, "flower_task_runtime_seconds",
                                  task="diagnostics.sleep"),
        },
        "celery_exporter": {
            "received": total(exp, "celery_task_received_total"),
            "succeeded": total(exp, "celery_task_succeeded_total"),
            "failed": total(exp, "celery_task_failed_total"),
            "failed_with_runtime": total(exp, "celery_task_runtime_count",
                                         name="diagnostics.fail"),
            "runtime": runtime_of(exp, "celery_task_runtime", name="diagnostics.sleep"),
        },
    }
    # The rate one window after the last task: a rate must fall when work stops.
    time.sleep(max(0.0, RATE_WINDOW + 2 - (time.monotonic() - finished)))
    rate_after = common.http_json(json_url).get("processing_rate")
    return {"truth": {**truth, "runtime": truth_runtime}, "tools": tools,
            "rate": {"tasker": {"during": max(rate_during), "after_stop": rate_after,
                                "window_seconds": RATE_WINDOW},
                     "flower": None, "celery_exporter": None}}


def depth_and_kill(peers: Peers, node: common.Worker, depth: int,
                   others: list[common.Worker]) -> dict[str, Any]:
    app = _tasker_app()
    client = common.redis_client()
    metrics_url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    long_task = app.send_task("diagnostics.sleep", args=[120], queue=node.queue)
    _wait(lambda: total(scrape(metrics_url), "tasker_worker_tasks_active") >= 1, 60,
          "the long task to start")
    with app.producer_or_acquire() as producer:
        for i in range(depth):
            app.send_task("diagnostics.noop", queue=node.queue, priority=i % 10,
                          producer=producer)
    lists = [node.queue] + [f"{node.queue}{PRIORITY_SEP}{p}" for p in range(1, 10)]

    def llen_all() -> int:
        return sum(client.llen(key) for key in lists)

    time.sleep(1.0)
    truth_depth = llen_all()
    base_list = client.llen(node.queue)
    # tasker: one sampler round, asked for as beat asks (the periodic queue).
    from tasker.periodic import periodic_queue_name
    from tasker.settings import get_settings

    app.send_task("tasker.sample_fleet", queue=periodic_queue_name(get_settings().step_queue))

    def tasker_depth() -> float | None:
        for worker in [node, *others]:
            s = scrape(f"http://127.0.0.1:{worker.metrics_port}/metrics")
            if any(n == "tasker_queue_depth" and lab.get("queue") == node.queue
                   for n, lab, _ in s):
                return total(s, "tasker_queue_depth", queue=node.queue)
        return None

    tasker_value = _poll_value(tasker_depth, lambda v: True, 30)

    def flower_depth() -> float | None:
        # Flower asks workers for their queues when told to (or when its page is opened).
        common.http_json(f"{peers.flower_url}/api/workers?refresh=1", timeout=15)
        queues = common.http_json(f"{peers.flower_url}/api/queues/length", timeout=15)
        for q in queues.get("active_queues", []):
            if q.get("name") == node.queue:
                return float(q.get("messages"))
        return None

    flower_value = _poll_value(flower_depth, lambda v: True, 30)

    def exporter_depth() -> float | None:
        s = scrape(peers.exporter_url)
        if any(n == "celery_queue_length" and lab.get("queue_name") == node.queue
               for n, lab, _ in s):
            return total(s, "celery_queue_length", queue_name=node.queue)
        return None

    exporter_value = _poll_value(exporter_depth, lambda v: v > 0, 30)
    truth_after = llen_all()

    # SIGKILL the pool process running the long task (the node has one).
    children = psutil.Process(node.pid).children()
    if len(children) != 1:
        raise RuntimeError(f"expected one pool process, found {len(children)}")
    os.kill(children[0].pid, signal.SIGKILL)
    tk = _poll_value(lambda: scrape(metrics_url),
                     lambda s: total(s, "tasker_tasks_failed_total", task="diagnostics.sleep")
                     >= 1 and total(s, "tasker_worker_process_exits_total") >= 1, 30)
    info = _poll_value(lambda: common.http_json(
        f"{peers.flower_url}/api/task/info/{long_task.id}"),
        lambda i: i.get("state") == "FAILURE", 30) or {}
    exp = _poll_value(lambda: scrape(peers.exporter_url),
                      lambda s: total(s, "celery_task_failed_total", name="diagnostics.sleep")
                      >= 1, 30)
    return {
        "depth": {"truth": truth_depth, "truth_after_readings": truth_after,
                  "base_list": base_list, "messages": depth,
                  "tools": {"tasker": tasker_value, "flower": flower_value,
                            "flower_where": "/api/queues/length (not in its /metrics)",
                            "celery_exporter": exporter_value}},
        "sigkill": {
            "truth": {"exception": "WorkerLostError", "process_exit": "lost"},
            "tools": {
                "tasker": {"exception": label_values(tk, "tasker_tasks_failed_total",
                                                     "exception", task="diagnostics.sleep"),
                           "process_exit": label_values(tk, "tasker_worker_process_exits_total",
                                                        "reason")},
                "flower": {"exception": [info.get("exception")] if info.get("exception")
                           else [], "process_exit": None},
                "celery_exporter": {
                    "exception": label_values(exp, "celery_task_failed_total", "exception",
                                              name="diagnostics.sleep"),
                    "process_exit": None},
            }},
    }


def throughput(client: Any, peers: Peers, work: Path, burst: int, cycles: int,
               warmup: int) -> dict[str, Any]:
    from bench.overhead import Generation

    variants = list(THROUGHPUT_VARIANTS)
    generation = Generation(client, variants, "peers", work, burst, cycles)
    generation.warmup_tasks = warmup
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    tool_cpu: dict[str, list[float]] = {"flower": [], "celery_exporter": []}
    try:
        generation.start()
        for cycle in range(1, cycles + 1):
            order = variants if cycle % 2 else list(reversed(variants))
            for name in order:
                before = peers.cpu()
                drain = generation.run_burst(name, burst)
                time.sleep(1.0)  # the tools finish the burst's events
                after = peers.cpu()
                runs[name].append(drain)
                if name == "bare_events":
                    for tool in tool_cpu:
                        tool_cpu[tool].append((after[tool] - before[tool]) / drain["tasks_timed"]
                                              * 1e3)
    finally:
        generation.stop()
    out: dict[str, Any] = {}
    base = [r["tasks_per_second"] for r in runs["bare"]]
    for name in variants:
        rs = runs[name]
        out[name] = {
            "tasks_per_second": statistics.median(r["tasks_per_second"] for r in rs),
            "ratio_to_bare": statistics.median(r["tasks_per_second"] / b
                                               for r, b in zip(rs, base, strict=True)),
            "cpu_ms_per_task_node": statistics.median(
                r["cpu_ms_per_task_main"] + r["cpu_ms_per_task_pool"] for r in rs
                if r["cpu_ms_per_task_main"] is not None
                and r["cpu_ms_per_task_pool"] is not None),
        }
    out["tools_cpu_ms_per_task"] = {tool: statistics.median(v) if v else None
                                    for tool, v in tool_cpu.items()}
    out["burst"], out["cycles"] = burst, cycles
    return out


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser("python -m bench.peers", __doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=2400)
    parser.add_argument("--depth", type=int, default=300)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--cycles", type=int, default=4)
    parser.add_argument("--install", action="store_true",
                        help=f"create celery-exporter's virtualenv ({EXPORTER_VENV}) first")
    parser.add_argument("--install-only", action="store_true",
                        help="create celery-exporter's virtualenv and stop (.ci/run)")
    args = parser.parse_args(argv)
    if args.install_only:
        install_exporter()
        return 0
    if args.quick:
        args.tasks, args.depth, args.burst, args.cycles = 240, 60, 300, 1
    if args.install or not exporter_python().exists():
        if not args.install:
            raise SystemExit(f"celery-exporter's virtualenv is missing ({EXPORTER_VENV}): "
                             "run python -m bench.peers --install")
        install_exporter()
    client = common.redis_client()
    common.purge_stale_unacked(client)
    work = Path(tempfile.mkdtemp(prefix="tasker-peers-"))
    queue = f"{common.SESSION}-{BENCH}-work"
    depth_queue = f"{common.SESSION}-{BENCH}-depth"
    results = common.Results(BENCH, args, {"tasks": args.tasks, "depth": args.depth,
                                           "burst": args.burst, "cycles": args.cycles})
    peers = Peers(work, [queue, depth_queue])
    nodes: list[common.Worker] = []
    ok = False
    try:
        results.write("versions", _versions())
        progress(BENCH, "starting Flower, celery-exporter and two tasker nodes (-E)")
        peers.start()
        node = common.start_worker(TASKER_EVENTS, queue, f"{queue}-w", work)
        depth_env = Variant("tasker_events_depth", "tasker", TASKER_EVENTS.description,
                            worker_args=("-E", "--prefetch-multiplier", "1"),
                            env=(*TASKER_EVENTS.env, ("TASKER_SAMPLE_QUEUES", depth_queue)))
        depth_node = common.start_worker(depth_env, depth_queue, f"{depth_queue}-w", work,
                                         extra_args=("-c", "1"))
        nodes += [node, depth_node]
        for worker in nodes:
            _wait(lambda w=worker: common.http_json(
                f"http://127.0.0.1:{w.metrics_port}/metrics.json"), 90, f"{worker.name}")
        progress(BENCH, f"{args.tasks:,} tasks: counts, failed runtimes, percentiles, rate")
        results.write("counts", counts_and_runtimes(peers, node, args.tasks))
        progress(BENCH, f"queue depth over priorities ({args.depth} waiting) and a SIGKILL")
        results.write("depth_kill", depth_and_kill(peers, depth_node, args.depth, [node]))
        for worker in nodes:
            worker.stop()
        progress(BENCH, f"throughput: {args.cycles} cycle(s) of {args.burst:,}-task bursts")
        results.write("throughput", throughput(client, peers, work, args.burst, args.cycles,
                                               warmup=100 if args.quick else 500))
        # What the report and the smoke test look for: every part ran.
        results.write("summary", {"parts": ["counts", "depth_kill", "throughput"]})
        ok = True
    finally:
        for worker in nodes:
            worker.stop()
        peers.stop()
        for q in (queue, depth_queue):
            common.delete_queue_keys(client, q)
        results.close(ok)
    progress(BENCH, f"results in {results.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
