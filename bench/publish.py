"""Publish benchmark tasks with one app's own publisher (a subprocess per run).

    python -m bench.publish --app bare|tasker --queue Q --task diagnostics.noop --count N
    python -m bench.publish --app bare|tasker --queue Q --latency-key K --rate 20 --duration 15

Each variant publishes through its own app, as its users would: tasker's
publisher stamps its headers (publish time, correlation id), bare Celery's does
not. Running in a separate process keeps the two apps' signal receivers apart.
Prints one JSON object (what was published, how long it took) on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def load_app(name: str) -> Any:
    if name == "tasker":
        import bench.tasker_tasks  # noqa: F401 - registers bench.latency
        from tasker import app
    elif name == "bare":
        from bench.bare_app import app
    else:
        raise SystemExit(f"unknown app {name!r}")
    return app


def _tasker_shaped_headers() -> dict[str, Any]:
    """Headers of the size and kind tasker's publisher adds (names and values alike)."""
    import uuid

    return {"tasker_published_at": f"{time.time():.6f}",
            "tasker_correlation_id": str(uuid.uuid4())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.publish")
    parser.add_argument("--app", required=True, choices=("bare", "tasker"))
    parser.add_argument("--queue", required=True)
    parser.add_argument("--task", default="diagnostics.noop")
    parser.add_argument("--count", type=int)
    parser.add_argument("--latency-key", help="publish bench.latency(time.time(), KEY)")
    parser.add_argument("--rate", type=float, help="tasks per second (with --duration)")
    parser.add_argument("--duration", type=float)
    parser.add_argument("--tasker-headers", action="store_true",
                        help="bare app: add headers shaped like tasker's two stamps "
                             "(what a message's size costs the worker, without tasker)")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="make every Nth task diagnostics.fail (a mix with failures)")
    args = parser.parse_args(argv)

    app = load_app(args.app)
    count = int(args.rate * args.duration) if args.rate else args.count
    if not count or count < 0:
        parser.error("give --count, or --rate with --duration")

    late: list[float] = []
    with app.producer_or_acquire() as producer:
        started = time.monotonic()
        for i in range(count):
            if args.rate:
                due = started + i / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late.append(-delay)
            if args.latency_key:
                app.send_task("bench.latency", args=[time.time(), args.latency_key],
                              queue=args.queue, producer=producer)
            elif args.fail_every and i % args.fail_every == args.fail_every - 1:
                app.send_task("diagnostics.fail", args=["soak failure"], queue=args.queue,
                              producer=producer)
            elif args.tasker_headers:
                app.send_task(args.task, queue=args.queue, producer=producer,
                              headers=_tasker_shaped_headers())
            else:
                app.send_task(args.task, queue=args.queue, producer=producer)
        elapsed = time.monotonic() - started
    json.dump({"published": count, "seconds": elapsed,
               "late_publishes": len(late), "max_late_seconds": max(late, default=0.0)},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
