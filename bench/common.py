"""Shared plumbing: results files, machine facts, statistics, worker processes.

Results: every benchmark writes ``<results dir>/<bench>-<mode>.jsonl`` (mode is
``full`` or ``quick``), replacing the previous file of the same name. The first
line is a ``meta`` record (machine, versions, command); then ``run`` records
(one measurement each) and ``summary`` records (what the report shows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO / "bench" / "results"

#: Redis database the benchmarks own (every key they create is deleted at the end).
REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "12"))
REDIS_URL = os.environ.get("BENCH_REDIS_URL", f"redis://127.0.0.1:6379/{REDIS_DB}")
#: Database the tasker variant's per-process pools connect to (nothing is written).
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")
#: Every queue and node name of this process starts with this (cleanup key).
SESSION = f"bench-{os.getpid()}"


# --------------------------------------------------------------------------- CLI


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop workers and delete keys."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller sizes (the whole suite in < 2 min)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help=f"where to write JSON lines (default {DEFAULT_RESULTS_DIR}, "
                             "or $BENCH_RESULTS_DIR)")
    return parser


def results_dir(args: argparse.Namespace) -> Path:
    chosen = args.results_dir or os.environ.get("BENCH_RESULTS_DIR") or DEFAULT_RESULTS_DIR
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    return path


def progress(bench: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {bench}: {message}", flush=True)


# ----------------------------------------------------------------------- results


class Results:
    """A JSON-lines results file for one benchmark invocation."""

    def __init__(self, bench: str, args: argparse.Namespace, params: dict[str, Any]) -> None:
        self.bench = bench
        self.mode = "quick" if args.quick else "full"
        self.path = results_dir(args) / f"{bench}-{self.mode}.jsonl"
        self._tmp = self.path.with_suffix(".jsonl.tmp")  # ignored by git
        self._file = open(self._tmp, "w")  # noqa: SIM115 - closed in close()
        self.started = time.time()
        self.write("meta", {
            "command": "python -m bench." + bench + "".join(
                " " + shlex.quote(a) for a in sys.argv[1:]),
            "via": os.environ.get("BENCH_VIA") or None,
            "params": params,
            "machine": machine_info(),
        })

    def write(self, kind: str, record: dict[str, Any]) -> None:
        line = {"bench": self.bench, "kind": kind, "mode": self.mode,
                "time": round(time.time(), 3), **record}
        self._file.write(json.dumps(line, sort_keys=False, default=_json_default) + "\n")
        self._file.flush()

    def close(self, ok: bool = True) -> None:
        self.write("end", {"ok": ok, "seconds": round(time.time() - self.started, 2)})
        self._file.close()
        os.replace(self._tmp, self.path)  # a crashed run never replaces a good file


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_results(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------- machine facts


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import psutil

    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
        # Changed code (results files and logs aside) means the figures are not the commit's.
        changed = subprocess.run(["git", "status", "--porcelain", "--", "tasker", "bench",
                                  ":!bench/results"], cwd=REPO, capture_output=True, text=True,
                                 timeout=5).stdout.strip()
        dirty = bool(changed) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "hostname": socket.gethostname(),
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_bytes": psutil.virtual_memory().total,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in (
            "celery", "kombu", "billiard", "redis", "prometheus_client", "psycopg",
            "psycopg-pool", "tasker")},
        "git_commit": commit,
        "git_dirty": dirty,
        "redis_server": _redis_server_version(),
    }


def _redis_server_version() -> str | None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            return str(client.info("server").get("redis_version"))
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - informational only
        return None


# -------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (q in 0..1) of a non-empty sequence."""
    data = sorted(values)
    if not data:
        raise ValueError("quantile of an empty sequence")
    pos = (len(data) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def spread(values: Iterable[float]) -> dict[str, Any]:
    """Median, quartiles, min, max and n of some measurements."""
    data = [float(v) for v in values]
    return {"median": statistics.median(data), "min": min(data), "max": max(data),
            "p25": quantile(data, 0.25), "p75": quantile(data, 0.75), "n": len(data)}


def median_ci95(values: Sequence[float], resamples: int = 10_000,
                seed: int = 20261130) -> tuple[float, float]:
    """95 % bootstrap confidence interval of the median (percentile method).

    How far the median of a handful of noisy rounds can be trusted: on a
    shared machine single rounds of the same code differ by ±15 %.
    The seed is fixed so that a report rebuilt from the same results is the same.
    """
    data = [float(v) for v in values]
    if len(data) < 2:
        return (data[0], data[0]) if data else (float("nan"), float("nan"))
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(data, k=len(data)))
                     for _ in range(resamples))
    return quantile(medians, 0.025), quantile(medians, 0.975)


def timed_repeats(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds per call of ``fn``, ``repeats`` times."""
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


# ------------------------------------------------------------------------ Redis


def redis_client() -> Any:
    import redis

    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=4, socket_timeout=30)


def delete_queue_keys(client: Any, queue: str) -> int:
    """Delete a queue's lists (every priority level) and its exchange binding."""
    keys = list(client.scan_iter(match=f"{queue}*", count=1000))
    keys.append(f"_kombu.binding.{queue}")
    return client.delete(*keys)


def cleanup_session_keys(client: Any) -> None:
    """Remove every key and binding this process created (names contain SESSION)."""
    for key in client.scan_iter(match=f"*{SESSION}*", count=1000):
        client.delete(key)
    for pattern in ("_kombu.binding.*", "_kombu.binding_permanent.*"):
        for key in client.scan_iter(match=pattern, count=1000):
            if client.type(key) != b"set":
                continue
            for member in client.smembers(key):
                if SESSION.encode() in member:
                    client.srem(key, member)
    # kombu >= 5.7 keeps a deadline per expiring binding table (the pidbox
    # exchange); drop the entries whose table is gone now.
    deadlines = "_kombu.binding_deadlines"
    if client.type(deadlines) == b"zset":
        for exchange in client.zrange(deadlines, 0, -1):
            if not client.exists(b"_kombu.binding." + exchange):
                client.zrem(deadlines, exchange)


def purge_stale_unacked(client: Any) -> int:
    """Drop kombu ``unacked`` entries left by benchmark processes that no longer run.

    A node killed with messages prefetched leaves them in the hash until
    kombu's visibility timeout; the throughput benchmark needs it empty.
    Only entries routed to a ``bench-<pid>-...`` queue of a dead pid are touched.
    """
    removed = 0
    for tag, value in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(value)[-1]
        except (ValueError, IndexError, TypeError):
            continue
        parts = str(routing_key).split("-")
        if len(parts) < 3 or parts[0] != "bench" or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        removed += client.hdel("unacked", tag)
        client.zrem("unacked_index", tag)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------- workers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Variant:
    """One way of running a worker node in a comparison.

    Attributes:
        name: short identifier used in results (``bare``, ``bare_events``, ``tasker``...).
        app: ``bare`` (:mod:`bench.bare_app`) or ``tasker``; also picks the publisher.
        description: one line for the report.
        worker_args: extra ``celery worker`` arguments (e.g. ``-E``).
        env: extra environment of the worker node (e.g. a tracing switch).
        publish_args: extra :mod:`bench.publish` arguments (e.g. ``--tasker-headers``).
        publisher: the app whose publisher fills this node's queue, when it is not
            ``app`` (``bare``: a plain Celery client, no tasker headers).
    """

    name: str
    app: str
    description: str
    worker_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    publish_args: tuple[str, ...] = ()
    publisher: str | None = None

    @property
    def celery_app(self) -> str:
        return "tasker" if self.app == "tasker" else "bench.bare_app"


#: Worker flags shared by every variant (same for all, so they cancel out).
COMMON_WORKER_ARGS = ("--pool", "prefork", "-c", "2", "--loglevel", "WARNING",
                      "--without-mingle", "--without-gossip")


def base_env() -> dict[str, str]:
    """The environment of every subprocess: ours, minus anything that changes tasker."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TASKER_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({
        "TASKER_BROKER_URL": REDIS_URL,
        "TASKER_DATABASE_URL": DATABASE_URL,
        "TASKER_LOG_FORMAT": "json",
        "BENCH_REDIS_URL": REDIS_URL,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    })
    return env


@dataclass
class Worker:
    """A ``celery worker`` node in its own session (so its whole group can be killed)."""

    variant: Variant
    queue: str
    name: str
    argv: list[str]
    log_path: Path
    metrics_port: int | None
    proc: subprocess.Popen[bytes] | None = None
    children_seen: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def begin_stop(self) -> None:
        """Ask for a warm shutdown (SIGTERM to the MainProcess) without waiting."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (SIGTERM to the MainProcess), then SIGKILL the whole group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(self.proc.pid)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def start_worker(variant: Variant, queue: str, name: str, log_dir: Path,
                 extra_args: Sequence[str] = (), wrapper: Sequence[str] = ()) -> Worker:
    """Start a node; ``wrapper`` runs it under another program (e.g. valgrind)."""
    port = free_port() if variant.app == "tasker" else None
    env = base_env()
    if port is not None:
        env["TASKER_METRICS_PORT"] = str(port)
        # A directory of our own (removed with log_dir), so nothing is left
        # in the system temp dir whatever way the node ends.
        multiproc = log_dir / f"{name}.metrics"
        multiproc.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc)
    env.update(dict(variant.env))
    argv = [*wrapper, sys.executable, "-m", "celery", "-A", variant.celery_app, "worker",
            *COMMON_WORKER_ARGS, "-Q", queue, "-n", f"{name}@%h",
            *variant.worker_args, *extra_args]
    log_path = log_dir / f"{name}.log"
    worker = Worker(variant, queue, name, argv, log_path, port)
    with open(log_path, "wb") as log:
        worker.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
    return worker


def wait_until(worker: Worker, check: Callable[[], tuple[bool, str]], timeout: float,
               interval: float = 0.2) -> None:
    """Call ``check()`` -> (done, status) until done; fail if the worker exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = check()
        if done:
            return
        if not worker.running():
            raise RuntimeError(f"worker {worker.name} exited ({status}):\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name}: {status} after {timeout:.0f}s\n"
                               f"{worker.log_tail()}")
        time.sleep(interval)


def publish(app: str, queue: str, *, count: int | None = None, task: str = "diagnostics.noop",
            latency_key: str | None = None, rate: float | None = None,
            duration: float | None = None, timeout: float = 600.0,
            processes: int = 1, fail_every: int = 0,
            extra_args: Sequence[str] = ()) -> dict[str, Any]:
    """Run :mod:`bench.publish` in subprocesses (``count`` split over ``processes``)."""
    base = [sys.executable, "-m", "bench.publish", "--app", app, "--queue", queue,
            *extra_args]
    if latency_key:
        base += ["--latency-key", latency_key]
    else:
        base += ["--task", task]
    if fail_every:
        base += ["--fail-every", str(fail_every)]
    if rate:
        argvs = [base + ["--rate", str(rate), "--duration", str(duration)]]
    else:
        assert count is not None
        shares = [count // processes + (1 if i < count % processes else 0)
                  for i in range(processes)]
        argvs = [base + ["--count", str(n)] for n in shares if n]
    procs = [subprocess.Popen(argv, env=base_env(), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for argv in argvs]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"publisher failed ({proc.returncode}): {err[-2000:]}")
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"published": sum(o["published"] for o in outputs),
            "seconds": max(o["seconds"] for o in outputs),
            "late_publishes": sum(o["late_publishes"] for o in outputs),
            "max_late_seconds": max(o["max_late_seconds"] for o in outputs)}


def http_json(url: str, timeout: float = 5.0) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())
