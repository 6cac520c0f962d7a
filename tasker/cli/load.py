"""``tasker load``: publish diagnostic tasks in a burst or at a steady pace."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from tasker.celery_app import app
from tasker.loadgen import DEFAULT_MIX, MixEntry, parse_mix, publish


def register(sub: Any) -> None:
    p = sub.add_parser("load", help="publish a burst or a paced load of diagnostic tasks")
    p.add_argument("--count", type=int, help="publish this many tasks as fast as possible")
    p.add_argument("--rate", type=float, help="tasks per second (with --duration)")
    p.add_argument("--duration", type=float, help="seconds to keep publishing at --rate")
    p.add_argument("--mix", default=DEFAULT_MIX,
                   help=f"task mix as name[:arg]=weight,... (default {DEFAULT_MIX})")
    p.add_argument("--queue", default=None, help="queue to publish to (default: celery)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    try:
        entries = parse_mix(args.mix)
        total = args.count if args.rate is None else int((args.rate or 0) * (args.duration or 0))
        if args.count is None and args.rate is None:
            raise ValueError("give --count, or --rate with --duration")
    except ValueError as exc:
        print(f"tasker load: {exc}", file=sys.stderr)
        return 2
    options = {"queue": args.queue} if args.queue else {}

    with app.producer_or_acquire() as producer:
        def send(entry: MixEntry) -> None:
            app.send_task(entry.task_name, args=entry.args, producer=producer, **options)

        started = time.monotonic()
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn(), disable=args.quiet,
                      transient=False) as progress:
            bar = progress.add_task("publishing", total=total)
            try:
                counts = publish(send, entries, count=args.count, rate=args.rate,
                                 duration=args.duration,
                                 on_published=lambda n: progress.update(bar, completed=n))
            except ValueError as exc:
                print(f"tasker load: {exc}", file=sys.stderr)
                return 2
    elapsed = time.monotonic() - started
    n = sum(counts.values())
    detail = ", ".join(f"{label}={c}" for label, c in sorted(counts.items()))
    rate = n / elapsed if elapsed else 0.0
    print(f"published {n} tasks in {elapsed:.2f}s ({rate:.1f}/s): {detail}")
    return 0
