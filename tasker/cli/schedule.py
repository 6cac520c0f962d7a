"""``tasker schedule``: each beat entry, its last run, next due time and lateness."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

from tasker.celery_app import app
from tasker.errors import EXIT_FAILED
from tasker.schedule_monitor import ScheduleStore, configured_periods

__all__ = ["register", "run", "rows"]


def register(sub: Any) -> None:
    p = sub.add_parser("schedule",
                       help="list beat's entries: last run, next due time, lateness")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def rows(now: float | None = None) -> list[dict[str, Any]]:
    """Every entry of the configuration and of the store, with what the store knows.

    Raises the store's connection error when the broker's Redis is unreachable
    (``tasker`` prints it on one line with exit code 3, ``EXIT_BROKER``).
    """
    now = time.time() if now is None else now
    store = ScheduleStore.from_settings(timeout=4.0)
    if store is None:
        raise _NoStore()
    try:
        known = {state.entry: state for state in store.entries()}
    finally:
        store.close()
    configured = configured_periods(app.conf.beat_schedule)
    out = []
    for name in sorted({*configured, *known}):
        state = known.get(name)
        row: dict[str, Any] = state.as_dict() if state is not None else {"entry": name}
        row["configured"] = name in configured
        row["period"] = row.get("period") or configured.get(name)
        row["task"] = row.get("task") or (app.conf.beat_schedule.get(name) or {}).get("task")
        last = row.get("last_start")
        row["seconds_since_last_start"] = None if last is None else round(now - last, 3)
        row["state"] = entry_state(row, now)
        out.append(row)
    return out


def entry_state(row: dict[str, Any], now: float) -> str:
    """``ok``, or what is wrong with the entry now (beat's view against the starts).

    * ``unknown``: beat never wrote the entry to the store;
    * ``beat silent``: a period past the next due time and beat has sent
      nothing newer (beat is down, or no longer has the entry);
    * ``never started``: beat sent it, no node ever started it;
    * ``not started``: the run due a period after the latest start is itself
      a period past its due time without a start (no node consumes it, or its
      messages expire): the ongoing gap the missed alert also watches.
    """
    period = row.get("period") or 0.0
    next_due, last_due = row.get("next_due"), row.get("last_due")
    if last_due is None or next_due is None:
        return "unknown"
    if now > next_due + period:
        return "beat silent"
    started_due = row.get("last_start_due")
    if started_due is None:
        return "never started"
    if now - started_due >= 2 * period:
        return "not started"
    return "ok"


class _NoStore(Exception):
    pass


def run(args: argparse.Namespace) -> int:
    try:
        found = rows()
    except _NoStore:
        print("tasker schedule: the broker is not Redis: beat's schedule is not stored "
              "(the tasker_schedule_* metrics still are)", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
    else:
        _print_table(found)
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _print_table(found: list[dict[str, Any]]) -> None:
    # lazy: rich costs 13-19 ms (python -X importtime); only a command that draws loads it.
    from rich.console import Console
    from rich.table import Table  # lazy: rich costs 13-19 ms; only this output draws

    table = Table(title="beat schedule")
    for col in ("entry", "task", "every s", "last start (UTC)", "lateness s",
                "next due (UTC)", "state"):
        table.add_column(col)
    for row in found:
        lateness = row.get("lateness")
        table.add_row(row["entry"], row.get("task") or "-",
                      "-" if row.get("period") is None else f"{row['period']:g}",
                      _when(row.get("last_start")),
                      "-" if lateness is None else f"{lateness:.3f}",
                      _when(row.get("next_due")), row["state"])
    Console().print(table)


