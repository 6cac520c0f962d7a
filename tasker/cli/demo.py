"""``tasker demo``: the whole fleet on one machine, with load and a live view.

Starts (as child processes, each in its own process group) one worker node
(prefork, 2 processes), beat and Flower; starts embedded Redis/PostgreSQL
under ``.tasker-data/`` when none is reachable at the configured URLs; runs
the migrations; publishes a mixed diagnostic load; shows the node's snapshot
live. Ctrl-C, SIGTERM or ``--duration`` stop everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasker.celery_app import app
from tasker.cli.stats import fetch, one_line, render
from tasker.loadgen import DEFAULT_MIX, parse_mix, weighted_cycle
from tasker.migrate import migrate
from tasker.settings import get_settings, reset_settings

#: Seconds each child gets to stop after SIGTERM before it is killed.
STOP_GRACE = 15.0
#: Environment marker carried by every process the demo starts (tests look for it).
RUN_MARKER = "TASKER_DEMO_RUN"


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a worker, beat and Flower with load and a live view")
    p.add_argument("--duration", type=float, default=None,
                   help="stop by itself after this many seconds (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=20.0, help="tasks published per second")
    p.add_argument("--mix", default=DEFAULT_MIX + ",hold_db:0.2=1", help="task mix (tasker load)")
    p.add_argument("--data-dir", default=".tasker-data",
                   help="where embedded servers and logs live (default .tasker-data)")
    p.add_argument("--no-flower", action="store_true", help="do not start Flower")
    p.set_defaults(run=run)


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it can be bound on loopback, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


@dataclass
class Fleet:
    """Everything the demo started, so that it can all be stopped."""

    data_dir: Path
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: list[Any] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        self.children[name] = subprocess.Popen(
            argv, env={**env, RUN_MARKER: self.run_id}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def stop(self) -> None:
        for name, proc in self.children.items():
            if name == "worker":
                # The worker's MainProcess alone: SIGTERM is Celery's warm shutdown,
                # which lets running tasks finish and returns prefetched ones to the
                # queue. Sent to the whole group it also killed the pool processes
                # mid-task (WorkerLostError): a cold stop where a warm one was possible.
                _signal_process(proc, signal.SIGTERM)
            else:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.children.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.children.values():
            _signal_group(proc, signal.SIGKILL)  # stragglers, pool processes included
            proc.wait()
        for server in reversed(self.servers):
            server.stop()


def _signal_process(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _with_database(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


def _binary(server: Any) -> str:
    """The executable an embedded server runs (system package or wheel)."""
    try:
        return os.readlink(f"/proc/{server.pid}/exe")
    except OSError:
        return "?"


def _prepare_services(fleet: Fleet, say: Any) -> None:
    """Use the configured Redis/PostgreSQL, or start embedded ones; say which, and why."""
    # lazy: only when a service must be started; saves 16 ms on every tasker
    # command (python -X importtime).
    from tasker.cli.embedded_services import (
        EmbeddedPostgres,
        EmbeddedRedis,
        postgres_reachable,
        redis_reachable,
    )

    settings = get_settings()
    if not settings.broker_is_redis:
        say(f"broker: using {settings.broker_url_redacted} (TASKER_BROKER_URL)")
    elif redis_reachable(settings.broker_url):
        say(f"Redis: using the one that answered at {settings.broker_url_redacted}"
            " (TASKER_BROKER_URL)")
    else:
        redis = EmbeddedRedis(fleet.data_dir / "redis")
        redis.start()
        fleet.servers.append(redis)
        os.environ["TASKER_BROKER_URL"] = redis.url
        say(f"Redis: none answered at {settings.broker_url_redacted} (TASKER_BROKER_URL): "
            f"started an embedded one at {redis.url} ({_binary(redis)}, data in {redis.data_dir})")
    admin_url = _with_database(settings.database_url, "postgres")
    if postgres_reachable(admin_url):
        say(f"PostgreSQL: using the one that answered at {settings.database_url_redacted}"
            " (TASKER_DATABASE_URL)")
    else:
        postgres = EmbeddedPostgres(fleet.data_dir / "postgres")
        postgres.start()
        fleet.servers.append(postgres)
        os.environ["TASKER_DATABASE_URL"] = _with_database(postgres.url, "tasker")
        say(f"PostgreSQL: none answered at {settings.database_url_redacted}"
            f" (TASKER_DATABASE_URL): started an embedded one at {postgres.url}"
            f" ({_binary(postgres)}, data in {postgres.data_dir})")
    reset_settings()


def _port(preferred: int, variable: str, what: str, say: Any) -> int:
    """``preferred`` if free, else any free port; say which and why."""
    port = free_port(preferred) if preferred else free_port()
    if not preferred:
        say(f"{what}: port {port} ({variable}=0: any free port)")
    elif port == preferred:
        say(f"{what}: port {port} ({variable})")
    else:
        say(f"{what}: port {preferred} ({variable}) is in use, perhaps by another node or an"
            f" earlier demo: using {port} instead")
    return port


def run(args: argparse.Namespace) -> int:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.console import Console

    # Long lines stay whole (a URL or path split over two lines is unusable).
    console = Console(soft_wrap=True)
    say = console.print
    get_settings()  # a bad setting stops the demo before it starts anything
    data_dir = Path(args.data_dir).resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    fleet = Fleet(data_dir)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _prepare_services(fleet, say)
        if stop.is_set():
            return 130
        return _run_fleet(args, fleet, stop, console)
    finally:
        say("stopping the demo fleet...")
        fleet.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
        say("stopped; nothing left running.")


def _run_fleet(args: argparse.Namespace, fleet: Fleet, stop: threading.Event,
               console: Any) -> int:
    say = console.print
    settings = get_settings()
    applied = migrate(settings.database_url)
    say(f"database {settings.database_url_redacted}: "
        + (f"{len(applied)} migration(s) applied" if applied else "schema up to date"))

    metrics_port = _port(settings.metrics_port, "TASKER_METRICS_PORT", "worker metrics", say)
    flower_port = 0 if args.no_flower else _port(5555, "Flower's default", "Flower", say)
    env = {**os.environ, "TASKER_METRICS_PORT": str(metrics_port),
           "TASKER_METRICS_BIND": "127.0.0.1"}
    env.setdefault("TASKER_SAMPLE_INTERVAL", "5")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the node makes its own
    celery = [sys.executable, "-m", "celery", "-A", "tasker"]
    fleet.spawn("worker", [*celery, "worker", "--pool", "prefork", "-c", "2", "--loglevel",
                           "INFO", "-n", f"demo-{fleet.run_id[:6]}@%h"], env)
    fleet.spawn("beat", [*celery, "beat", "--loglevel", "INFO"], env)
    if not args.no_flower:
        conf = Path("flower.conf")
        flower = [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"]
        if conf.exists():
            flower.insert(len(celery) + 1, f"--conf={conf.resolve()}")
        fleet.spawn("flower", flower, {**env, "FLOWER_UNAUTHENTICATED_API": "true"})

    metrics_url = f"http://127.0.0.1:{metrics_port}"
    say(f"worker metrics: {metrics_url}/metrics  snapshot: {metrics_url}/metrics.json")
    if not args.no_flower:
        say(f"Flower:         http://127.0.0.1:{flower_port}")
    say(f"logs:           {fleet.data_dir / 'logs'}")

    loader = threading.Thread(target=_drive_load, args=(args, stop, say), daemon=True)
    loader.start()
    deadline = time.monotonic() + args.duration if args.duration else None
    _live_view(metrics_url, fleet, stop, deadline, console)
    stop.set()
    loader.join(timeout=5)
    for name, proc in fleet.children.items():
        if proc.poll() is not None:
            say(f"[red]{name} exited early with code {proc.returncode}; see its log[/red]")
            return 1
    return 0


def _drive_load(args: argparse.Namespace, stop: threading.Event, say: Any) -> None:
    entries = weighted_cycle(parse_mix(args.mix))
    interval = 1.0 / args.rate
    next_at = time.monotonic()
    try:
        with app.producer_or_acquire() as producer:
            while not stop.is_set():
                entry = next(entries)
                app.send_task(entry.task_name, args=entry.args, producer=producer)
                next_at += interval
                stop.wait(max(0.0, next_at - time.monotonic()))
    except Exception as exc:  # noqa: BLE001 - show it, keep the view running
        say(f"[red]load stopped: {exc}[/red]")


def _live_view(metrics_url: str, fleet: Fleet, stop: threading.Event, deadline: float | None,
               console: Any) -> None:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.live import Live

    token = get_settings().metrics_token

    def finished() -> bool:
        exited = any(p.poll() is not None for p in fleet.children.values())
        return stop.is_set() or exited or (deadline is not None and time.monotonic() >= deadline)

    if not console.is_terminal:
        # Not a terminal (CI, a pipe): one plain line every few seconds.
        while not finished():
            snap = fetch(f"{metrics_url}/metrics.json", token)
            print(one_line(metrics_url, snap), flush=True)
            stop.wait(5.0 if deadline is None else min(5.0, max(0.1, deadline - time.monotonic())))
        return
    with Live(console=console, refresh_per_second=2) as live:
        while not finished():
            live.update(render([(metrics_url, fetch(f"{metrics_url}/metrics.json", token))]))
            stop.wait(1.0)
