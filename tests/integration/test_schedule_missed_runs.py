"""Periodic-task monitoring through real processes (issue 2.7, part 2).

Beat sends ``tasker.recover_steps`` every 2 s (``TASKER_RECOVERY_INTERVAL``) to
a real worker node, a real Prometheus scrapes the node with the shipped alert
rules. Under normal operation no run is missed and the median lateness is
under 100 ms; with the node stopped for 10 s the node counts at least 4 missed
runs when it is back (their messages expired in the queue: they never
started) and ``TaskerScheduleEntryMissed`` fires.

A private Redis (tasker.cli.embedded_services) holds the queues and the schedule store, so
nothing else sends or counts this entry.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from servers import PrometheusServer, prometheus_config, start_beat, start_prometheus, stop_group
from support import REPO, total, wait_for

from tasker.cli.embedded_services import EmbeddedRedis

ENTRY = "tasker.recover_steps"
PERIOD = 2.0
RULES = REPO / "deploy" / "prometheus" / "rules" / "tasker-alerts.yml"


def _bucket(samples: dict, le: str) -> float:
    return total(samples, "tasker_schedule_lateness_seconds_bucket", entry=ENTRY, le=le)


def _scrape_or_none(node) -> dict | None:
    try:
        return node.scrape()
    except (OSError, AssertionError):
        return None  # restarting


def _query(prom: PrometheusServer, expr: str) -> list[dict]:
    with contextlib.suppress(OSError, ValueError):
        return prom.query(expr)
    return []


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_missed_runs_lateness_and_the_missed_alert(start_node, tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmbeddedRedis(tmp_path / "redis"))
        url = f"redis://127.0.0.1:{server.port}/0"
        env = {"TASKER_BROKER_URL": url, "TASKER_RECOVERY_INTERVAL": str(int(PERIOD)),
               "TASKER_SAMPLE_INTERVAL": "4"}
        node = start_node(queue="celery", env=env)
        config = prometheus_config(tmp_path / "prometheus.yml", [f"127.0.0.1:{node.port}"],
                                   [RULES])
        prometheus = stack.enter_context(start_prometheus(config, tmp_path / "prometheus"))
        beat = start_beat({**node.env, **env}, tmp_path / "beat.log", cwd=tmp_path)
        try:
            # The node created the entry's series at zero when it was ready.
            first = node.scrape()
            assert total(first, "tasker_schedule_missed_total", entry=ENTRY) == 0
            assert total(first, "tasker_schedule_period_seconds", entry=ENTRY) == PERIOD

            # Normal operation: 12 runs (about 24 s), none missed, median lateness < 100 ms.
            wait_for(lambda: _bucket(node.scrape(), "+Inf") >= 12, timeout=60, interval=0.5,
                     message=f"12 starts of {ENTRY}; beat log:\n"
                             f"{(tmp_path / 'beat.log').read_text()[-3000:]}")
            normal = node.scrape()
            count = _bucket(normal, "+Inf")
            assert total(normal, "tasker_schedule_missed_total", entry=ENTRY) == 0
            # p50 < 100 ms: at least half of the runs started within 0.1 s of their due time.
            assert _bucket(normal, "0.1") >= count / 2, {
                k[1]: v for k, v in normal.items()
                if k[0] == "tasker_schedule_lateness_seconds_bucket"}
            last_start = total(normal, "tasker_schedule_last_start_timestamp_seconds",
                               entry=ENTRY)
            assert time.time() - 10 < last_start <= time.time()
            # The sampler runs in the MainProcess (no task signals there): recorded too.
            sampled = total(normal, "tasker_schedule_last_start_timestamp_seconds",
                            entry="tasker.sample_fleet")
            assert time.time() - 20 < sampled <= time.time()

            # tasker schedule reads what beat and the node stored.
            def schedule_row() -> dict:
                shown = subprocess.run([sys.executable, "-m", "tasker.cli.main", "schedule",
                                        "--json"], env={**node.env, **env}, cwd=REPO,
                                       capture_output=True, text=True, timeout=60)
                assert shown.returncode == 0, shown.stderr
                return next(r for r in json.loads(shown.stdout) if r["entry"] == ENTRY)

            row = schedule_row()
            assert row["task"] == ENTRY and row["period"] == PERIOD and row["state"] == "ok"
            assert time.time() - 10 < row["last_start"] <= time.time()
            assert 0 <= row["lateness"] < 5
            assert row["next_due"] > row["last_due"]

            # The node away for 10 s: beat keeps sending, the messages expire.
            node.stop()
            stopped = time.monotonic()
            # Beat still sends; nothing starts: the command shows it while it lasts.
            time.sleep(2 * PERIOD + 0.5)
            assert schedule_row()["state"] == "not started"
            time.sleep(max(10 - (time.monotonic() - stopped), 0))
            node.start(wait=False)

            def missed() -> float:
                samples = _scrape_or_none(node)
                return total(samples, "tasker_schedule_missed_total", entry=ENTRY) \
                    if samples else 0.0

            wait_for(lambda: missed() >= 4, timeout=60, interval=0.5,
                     message=f"at least 4 missed runs counted; node log:\n{node.log()[-3000:]}")

            # The real Prometheus: the alert fires once the node runs the entry
            # on time again, i.e. from the counted runs, not from the gap.
            def firing() -> bool:
                fresh = _query(prometheus, "time() - max(tasker_schedule_last_start_timestamp_"
                                         f'seconds{{entry="{ENTRY}"}}) < {2 * PERIOD}')
                alerts = _query(prometheus, 'ALERTS{alertname="TaskerScheduleEntryMissed",'
                                          f'alertstate="firing",entry="{ENTRY}"}}')
                return bool(fresh and alerts)

            wait_for(firing, timeout=60, interval=1,
                     message="TaskerScheduleEntryMissed firing in Prometheus")
            increase = _query(prometheus, "sum(increase(tasker_schedule_missed_total"
                                        f'{{entry="{ENTRY}"}}[5m]))')
            assert increase and float(increase[0]["value"][1]) >= 3, increase
            print(f"runs before the stop: {count:g}, within 100 ms: {_bucket(normal, '0.1'):g}, "
                  f"within 10 ms: {_bucket(normal, '0.01'):g}; missed after it: {missed():g}")
        finally:
            stop_group(beat, timeout=20)
