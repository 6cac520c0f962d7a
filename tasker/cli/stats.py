"""``tasker stats``: one or more nodes' ``/metrics.json`` as a table."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from tasker.redact import redact_text
from tasker.settings import get_settings


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="show worker nodes' metrics snapshots")
    p.add_argument("urls", nargs="*", metavar="URL",
                   help="node URLs or host:port (default: this machine's TASKER_METRICS_PORT)")
    p.add_argument("--watch", nargs="?", const=2.0, type=float, metavar="SECONDS",
                   help="refresh every SECONDS (default 2) until Ctrl-C")
    p.add_argument("--json", action="store_true", help="print the raw snapshots as JSON")
    p.set_defaults(run=run)


def snapshot_url(url: str) -> str:
    """``host:port`` or ``http://host:port`` -> ``http://host:port/metrics.json``."""
    if "://" not in url:
        url = f"http://{url}"
    scheme, _, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if not path:
        path = "metrics.json"
    return f"{scheme}://{host}/{path}"


def fetch(url: str, token: str | None, timeout: float = 3.0) -> dict[str, Any]:
    """The node's snapshot, or ``{"error": reason}`` when it cannot be read."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return {"error": f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"error": f"unreachable ({redact_text(str(reason))})"}
    except ValueError:
        return {"error": "not a tasker snapshot"}


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}{suffix}"
    return f"{value}{suffix}"


def render(rows: list[tuple[str, dict[str, Any]]]) -> Any:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.table import Table

    table = Table(title="tasker nodes")
    for col in ("node", "worker", "uptime", "runs", "ok %", "rate/s", "ema ms", "busy/procs",
                "db pool", "queues"):
        table.add_column(col)
    for url, snap in rows:
        if "error" in snap:
            table.add_row(url, f"[red]{snap['error']}[/red]", *[""] * 8)
            continue
        pool = snap.get("db_pool") or {}
        db = f"{pool['size'] - pool['available']}/{pool['max']}" if pool else "-"
        queues = ", ".join(f"{q}={v.get('depth')}" for q, v in (snap.get("queues") or {}).items())
        table.add_row(url, snap.get("worker", "?"), snap.get("uptime", "?"),
                      str(snap.get("total_runs", "?")), _fmt(snap.get("success_rate")),
                      _fmt(snap.get("processing_rate")), _fmt(snap.get("average_latency_ms")),
                      f"{snap.get('active_processors', '?')}/{snap.get('pool_processes', '?')}",
                      db, queues or "-")
    return table


def one_line(url: str, snap: dict[str, Any]) -> str:
    """One node as one plain line (for pipes, logs and CI)."""
    if "error" in snap:
        return f"{url}: {snap['error']}"
    queues = ", ".join(f"{q}={v.get('depth')}" for q, v in (snap.get("queues") or {}).items())
    return (f"{url}: worker={snap.get('worker')} uptime={snap.get('uptime')} "
            f"runs={snap.get('total_runs')} ok%={_fmt(snap.get('success_rate'))} "
            f"rate={_fmt(snap.get('processing_rate'))}/s "
            f"ema_ms={_fmt(snap.get('average_latency_ms'))} "
            f"busy={snap.get('active_processors')}/{snap.get('pool_processes')} "
            f"db_pool={snap.get('db_pool')} queues={queues or '-'}")


def run(args: argparse.Namespace) -> int:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.console import Console
    from rich.live import Live  # lazy: rich costs 13-19 ms; only the live view draws

    settings = get_settings()
    urls = args.urls or [f"127.0.0.1:{settings.metrics_port}"]
    targets = [snapshot_url(u) for u in urls]

    def collect() -> list[tuple[str, dict[str, Any]]]:
        return [(url, fetch(url, settings.metrics_token)) for url in targets]

    rows = collect()
    if args.json:
        print(json.dumps({url: snap for url, snap in rows}, indent=2))
    elif args.watch:
        with Live(render(rows), refresh_per_second=4) as live:
            try:
                while True:
                    time.sleep(args.watch)
                    rows = collect()
                    live.update(render(rows))
            except KeyboardInterrupt:
                pass
    else:
        console = Console()
        if console.is_terminal:
            console.print(render(rows))
        else:
            for url, snap in rows:
                print(one_line(url, snap))
    return 0 if any("error" not in snap for _, snap in rows) else 1
