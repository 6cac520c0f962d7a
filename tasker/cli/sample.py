"""``tasker sample --once``: one fleet sample in the foreground, printed."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tasker.celery_app import app


def register(sub: Any) -> None:
    p = sub.add_parser("sample", help="run one fleet sample (queues, database) and print it")
    p.add_argument("--once", action="store_true", required=True,
                   help="sample once and exit (the beat task samples periodically)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # lazy: the sampler's modules cost 6 ms (python -X importtime), paid by this command only.
    from tasker.tasks.fleet_sampler import run_sample_round

    result = run_sample_round(app)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        _print_table(result)
    # Exit 0 even when a source is down: that is a valid sample (sample_up 0).
    return 0


def _print_table(result: Any) -> None:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.console import Console
    from rich.table import Table  # lazy: rich costs 13-19 ms; only this output draws

    console = Console()
    sources = Table(title="sources")
    for col in ("source", "up", "duration ms", "error"):
        sources.add_column(col)
    for name, src in result.sources.items():
        sources.add_row(name, "1" if src.up else "0", f"{src.duration * 1000:.1f}",
                        src.error or "")
    console.print(sources)
    broker = result.sources.get("broker")
    if broker and broker.up:
        queues = Table(title="queues")
        for col in ("queue", "depth", "oldest age s", "unacked", "consumers"):
            queues.add_column(col)
        for name, q in sorted(broker.values["queues"].items()):
            age = q["oldest_message_age_seconds"]
            queues.add_row(name, str(q["depth"]), "" if age is None else f"{age:.2f}",
                           _blank(q["unacked"]), _blank(q["consumers"]))
        console.print(queues)
    database = result.sources.get("database")
    if database and database.up:
        db = database.values
        states = ", ".join(f"{k}={v}" for k, v in sorted(db["connections_by_state"].items()))
        console.print(f"database: max_connections={db['max_connections']} connections: {states}")


def _blank(value: object) -> str:
    return "" if value is None else str(value)
