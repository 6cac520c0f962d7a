"""Generate tasker's Grafana dashboards: deploy/grafana/dashboards/*.json.

Edit the panels here, then regenerate and commit both this script and the JSON:

    python deploy/grafana/build_dashboards.py           # rewrite the JSON files
    python deploy/grafana/build_dashboards.py --check   # exit 1 if they are stale

Every query is PromQL over the metric names of SPEC §4/§5 and the recording
rules in deploy/prometheus/rules/; tests/deploy/test_prometheus_rules.py parses
each one with promtool and runs it against a real Prometheus.

Fleet samples (tasker_queue_*, tasker_db_connections, ...) may be exported by
several nodes at once, so queries take ``max by`` across nodes, never ``sum``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

#: uid of the data source in provisioning/datasources/prometheus.yml; the
#: dashboards' DS_PROMETHEUS variable defaults to it.
DATASOURCE_UID = "tasker-prometheus"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

FLEET_UID = "tasker-fleet"
NODE_UID = "tasker-node"
WORKER_JOB = "tasker-worker"

#: Data link from any per-node series (it carries `instance`) to the node dashboard.
NODE_LINK = {
    "title": "Open node ${__field.labels.instance}",
    "url": f"/d/{NODE_UID}/tasker-node?var-instance=${{__field.labels.instance}}"
    "&${__url_time_range}",
}

GREEN, YELLOW, RED = "green", "#EAB839", "red"


# --- panel builders ---------------------------------------------------------

def target(expr: str, legend: str = "", *, instant: bool = False, table: bool = False) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    else:
        t["range"] = True
    if table:
        t["format"] = "table"
    return t


def thresholds(*steps: tuple[float | None, str]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def timeseries(title: str, targets: list[dict], *, unit: str = "short", description: str = "",
               width: int = 12, height: int = 8, stack: bool = False, bars: bool = False,
               max_value: float | None = None, limit: float | None = None,
               node_links: bool = False, overrides: list[dict] | None = None) -> dict:
    """A time series panel; `limit` draws a red threshold line at that value."""
    defaults: dict = {
        "unit": unit,
        "min": 0,
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "lineWidth": 1,
            "fillOpacity": 80 if bars else (25 if stack else 10),
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if limit is not None else "off"},
        },
        "color": {"mode": "palette-classic"},
        "thresholds": thresholds((None, GREEN), *([(limit, RED)] if limit is not None else [])),
    }
    if max_value is not None:
        defaults["max"] = max_value
    if node_links:
        defaults["links"] = [NODE_LINK]
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom",
                       "calcs": ["lastNotNull", "max"], "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": _ref_ids(targets),
        "_size": (width, height),
    }


def stat(title: str, expr: str, *, unit: str = "short", description: str = "",
         steps: Iterable[tuple[float | None, str]] = ((None, GREEN),),
         mappings: list[dict] | None = None, width: int = 4, height: int = 4) -> dict:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": thresholds(*steps),
                         "color": {"mode": "thresholds"}, "mappings": mappings or []},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "textMode": "auto",
            "orientation": "auto",
        },
        "targets": _ref_ids([target(expr, instant=False)]),
        "_size": (width, height),
    }


def info_table(title: str, expr: str, *, hide: list[str], description: str = "",
               width: int = 24, height: int = 4) -> dict:
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "organize", "options": {"excludeByName": {name: True for name in hide}}},
        ],
        "targets": _ref_ids([target(expr, instant=True, table=True)]),
        "_size": (width, height),
    }


def quantile(q: float, metric: str, by: str, selector: str) -> str:
    """One quantile of a histogram: native where the server has it, else the classic buckets.

    A Prometheus with native histograms stores tasker's runtime and wait
    histograms as one native series (no ``_bucket`` series); one without, the
    classic buckets. ``or`` takes the native answer when there is one.
    """
    native_by = f"sum by ({by}) " if by else "sum "
    group = f"{by}, le" if by else "le"
    return (f"histogram_quantile({q}, {native_by}(rate({metric}{selector}[$__rate_interval]))) "
            f"or histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{selector}[$__rate_interval])))")


def percentiles(metric: str, by: str, selector: str, unit: str = "s") -> list[dict]:
    """p50/p95/p99 targets of a histogram, summed `by` the given labels."""
    legend_prefix = "{{" + by + "}} " if by else ""
    return [target(quantile(q, metric, by, selector), f"{legend_prefix}p{round(q * 100)}")
            for q in (0.5, 0.95, 0.99)]


def limit_line(name: str) -> dict:
    """Override that draws the series `name` as an unstacked red dashed line."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [
            {"id": "color", "value": {"mode": "fixed", "fixedColor": RED}},
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        ],
    }


def _ref_ids(targets: list[dict]) -> list[dict]:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return targets


# --- dashboard assembly -----------------------------------------------------

def layout(rows: list[tuple[str, list[dict]]]) -> list[dict]:
    """Give every panel an id and a gridPos: rows stacked, panels left to right."""
    panels: list[dict] = []
    next_id = 1
    y = 0
    for title, row_panels in rows:
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "id": next_id, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}})
        next_id += 1
        y += 1
        x = 0
        row_height = 0
        for panel in row_panels:
            width, height = panel.pop("_size")
            if x + width > 24:
                x = 0
                y += row_height
                row_height = 0
            panel["id"] = next_id
            panel["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
            next_id += 1
            x += width
            row_height = max(row_height, height)
            panels.append(panel)
        y += row_height
    return panels


def datasource_variable() -> dict:
    return {
        "name": "DS_PROMETHEUS",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {"selected": False, "text": "Prometheus", "value": DATASOURCE_UID},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
    }


def query_variable(name: str, label: str, query: str, *, multi: bool) -> dict:
    variable = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change: new workers and tasks appear
        "sort": 1,
        "hide": 0,
        "regex": "",
        "options": [],
        "includeAll": multi,
        "multi": multi,
    }
    if multi:
        variable["allValue"] = ".*"
        variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
    else:
        variable["current"] = {}
    return variable


def dashboard(uid: str, title: str, description: str, variables: list[dict],
              rows: list[tuple[str, list[dict]]], links: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["tasker"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1,
            "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True,
            "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": links,
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(rows),
    }


# --- the fleet dashboard ----------------------------------------------------

def fleet_dashboard() -> dict:
    task = '{task=~"$task"}'
    queue = '{queue=~"$queue"}'
    finished = (f"rate(tasker_tasks_succeeded_total{task}[$__rate_interval])"
                f" or rate(tasker_tasks_failed_total{task}[$__rate_interval])")

    overview = [
        stat("Worker nodes up", f'sum(up{{job="{WORKER_JOB}"}})',
             description="Worker nodes Prometheus scraped successfully.",
             steps=((None, RED), (1, GREEN))),
        stat("Finished tasks", f"sum({finished})", unit="ops",
             description="Succeeded + failed executions per second, whole fleet."),
        stat("Failure ratio",
             f"(sum(rate(tasker_tasks_failed_total{task}[$__rate_interval])) or vector(0))"
             f" / sum({finished})",
             unit="percentunit", steps=((None, GREEN), (0.05, YELLOW), (0.1, RED))),
        stat("Messages waiting", f"sum(max by (queue) (tasker_queue_depth{queue}))",
             description="All queues, from the fleet sampler."),
        stat("Oldest message", f"max(tasker_queue_oldest_message_age_seconds{queue})",
             unit="s", steps=((None, GREEN), (60, YELLOW), (300, RED))),
        stat("DB connections used",
             "sum(max by (state) (tasker_db_connections)) / max(tasker_db_max_connections)",
             unit="percentunit", description="Server-side connections / max_connections.",
             steps=((None, GREEN), (0.75, YELLOW), (0.9, RED))),
    ]

    tasks = [
        timeseries("Succeeded per task", [
            target(f"sum by (task) (rate(tasker_tasks_succeeded_total{task}[$__rate_interval]))",
                   "{{task}}"),
        ], unit="ops"),
        timeseries("Failed per task and exception", [
            target("sum by (task, exception) "
                   f"(rate(tasker_tasks_failed_total{task}[$__rate_interval]))",
                   "{{task}}: {{exception}}"),
        ], unit="ops", description="Raised errors, time limits and lost processes."),
        timeseries("Failure ratio per task (5m)", [
            target(f"tasker:task_failure_ratio:rate5m{task}", "{{task}}"),
        ], unit="percentunit", max_value=1, limit=0.1,
            description="Recording rule tasker:task_failure_ratio:rate5m; alert above 10%."),
        timeseries("Retried, revoked and rejected", [
            target(f"sum by (task) (rate(tasker_tasks_retried_total{task}[$__rate_interval]))",
                   "retried {{task}}"),
            target(f"sum by (task) (rate(tasker_tasks_revoked_total{task}[$__rate_interval]))",
                   "revoked {{task}}"),
            target("sum by (reason) (rate(tasker_tasks_rejected_total[$__rate_interval]))",
                   "rejected: {{reason}}"),
        ], unit="ops"),
    ]

    queues = [
        timeseries("Queue depth", [
            target(f"max by (queue) (tasker_queue_depth{queue})", "{{queue}}"),
        ], description="Messages waiting, all Redis priority levels (max across nodes)."),
        timeseries("Oldest message age", [
            target(f"max by (queue) (tasker_queue_oldest_message_age_seconds{queue})",
                   "{{queue}}"),
        ], unit="s", limit=300, description="Age of the next message to be consumed."),
        timeseries("Unacknowledged messages", [
            target(f"max by (queue) (tasker_queue_unacked{queue})", "{{queue}}"),
        ], description="Delivered to a worker, not yet acknowledged."),
        timeseries("Consumers", [
            target(f"max by (queue) (tasker_queue_consumers{queue})", "{{queue}}"),
        ], description="Where the broker tells (AMQP); empty on Redis."),
    ]

    latency = [
        timeseries("Task runtime p50 / p95 / p99",
                   percentiles("tasker_task_runtime_seconds", "task", task), unit="s",
                   description="Start to finish, every outcome, all nodes."),
        timeseries("Queue wait p50 / p95 / p99",
                   percentiles("tasker_task_queue_wait_seconds", "task", task), unit="s",
                   description="Publish (or ETA) to start, all nodes."),
    ]

    workers = [
        timeseries("Processing rate per node", [
            target("tasker_worker_processing_rate", "{{worker}}"),
        ], unit="ops", node_links=True,
            description="Tasks finished per second over the last TASKER_RATE_WINDOW seconds."),
        timeseries("Latency EMA per node", [
            target("tasker_worker_latency_ema_seconds", "{{worker}}"),
        ], unit="s", node_links=True, description="EMA of task runtime (TASKER_EMA_ALPHA)."),
        timeseries("Pool utilization per node", [
            target("tasker_worker_pool_utilization", "{{worker}}"),
            target("sum(tasker_worker_pool_busy_processes) / sum(tasker_worker_pool_processes)",
                   "fleet"),
        ], unit="percentunit", max_value=1, node_links=True,
            description="Busy pool processes / pool processes."),
        timeseries("Active and reserved tasks per node", [
            target("tasker_worker_tasks_active", "{{worker}} active"),
            target("tasker_worker_tasks_reserved", "{{worker}} reserved"),
            target("tasker_worker_tasks_scheduled", "{{worker}} scheduled"),
        ], node_links=True),
        timeseries("Pool process exits by reason", [
            target("sum by (worker, instance, reason) "
                   "(increase(tasker_worker_process_exits_total[$__rate_interval]))",
                   "{{worker}} {{reason}}"),
        ], bars=True, stack=True, node_links=True,
            description="recycled (max tasks/memory per child), lost (signal, OOM), error."),
        timeseries("Memory per node", [
            target("tasker_worker_memory_bytes", "{{worker}}"),
        ], unit="bytes", node_links=True,
            description="Resident memory of the node, all its processes."),
    ]

    database = [
        timeseries("DB pool connections per node", [
            target("tasker_db_pool_size", "{{worker}} size"),
            target("tasker_db_pool_available", "{{worker}} available"),
            target("tasker_db_pool_max", "{{worker}} max"),
        ], node_links=True, description="Connections the node's pools hold, idle, maximum."),
        timeseries("DB pool utilization per node", [
            target("tasker_db_pool_utilization", "{{worker}}"),
        ], unit="percentunit", max_value=1, limit=0.8, node_links=True,
            description="(size - available) / max; alert above 80% for 5 minutes."),
        timeseries("Callers waiting for a connection", [
            target("tasker_db_pool_requests_waiting", "{{worker}}"),
        ], node_links=True),
        timeseries("Connection wait p95 per node", [
            target("histogram_quantile(0.95, sum by (worker, instance, le) "
                   "(rate(tasker_db_pool_wait_seconds_bucket[$__rate_interval])))",
                   "{{worker}}"),
        ], unit="s", node_links=True),
        timeseries("Server connections vs max_connections", [
            target("max by (state) (tasker_db_connections)", "{{state}}"),
            target("max(tasker_db_max_connections)", "max_connections"),
        ], stack=True, overrides=[limit_line("max_connections")],
            description="pg_stat_activity by state, from the fleet sampler."),
        timeseries("DB pool errors by kind", [
            target("sum by (kind) (rate(tasker_db_pool_errors_total[$__rate_interval]))",
                   "{{kind}}"),
        ], unit="ops"),
    ]

    sampler = [
        timeseries("Sample age by source", [
            target("time() - max by (source) (tasker_sample_timestamp_seconds)", "{{source}}"),
        ], unit="s", limit=45, width=8,
            description="Since the newest successful sample of any node; stale above "
                        "3 x TASKER_SAMPLE_INTERVAL."),
        timeseries("Sample up by node and source", [
            target("tasker_sample_up", "{{source}} @ {{instance}}"),
        ], max_value=1, width=8, description="1 when that node's last sample worked."),
        timeseries("Sample duration", [
            target("max by (source) (tasker_sample_duration_seconds)", "{{source}}"),
        ], unit="s", width=8),
    ]

    # Beat entries (tasker/schedule_monitor.py): recorded where each run starts.
    schedule = [
        timeseries("Beat entry lateness (start - due)", [
            target(f"histogram_quantile({q}, sum by (entry, le) "
                   "(rate(tasker_schedule_lateness_seconds_bucket[$__rate_interval])))",
                   f"{{{{entry}}}} p{round(q * 100)}") for q in (0.5, 0.95)
        ], unit="s", width=8, limit=30,
            description="How late each entry's runs started; TaskerScheduleEntryLate above "
                        "a 30 s median."),
        timeseries("Since the last start vs the period", [
            target("time() - max by (entry) (tasker_schedule_last_start_timestamp_seconds)",
                   "{{entry}} since last start"),
            target("max by (entry) (tasker_schedule_period_seconds)", "{{entry}} period"),
        ], unit="s", width=8,
            description="Two periods without a start fire TaskerScheduleEntryMissed."),
        timeseries("Missed runs", [
            target("sum by (entry) (increase(tasker_schedule_missed_total[$__rate_interval]))",
                   "{{entry}}"),
        ], bars=True, width=8,
            description="Due runs not started within one period (started later or never), "
                        "counted at the entry's next start."),
    ]

    return dashboard(
        FLEET_UID, "tasker / Fleet",
        "Throughput, failures, queues, latency, worker pools and the database for the "
        "whole tasker fleet.",
        [
            query_variable("task", "Task", "label_values(tasker_tasks_received_total, task)",
                           multi=True),
            query_variable("queue", "Queue", "label_values(tasker_queue_depth, queue)",
                           multi=True),
        ],
        [
            ("Overview", overview),
            ("Tasks", tasks),
            ("Queues (fleet sampler)", queues),
            ("Latency", latency),
            ("Worker nodes", workers),
            ("Database", database),
            ("Fleet sampler", sampler),
            ("Beat schedule", schedule),
        ],
        links=[{"title": "Node drill-down", "type": "link", "icon": "dashboard",
                "url": f"/d/{NODE_UID}/tasker-node", "keepTime": True}],
    )


# --- the node dashboard -----------------------------------------------------

def node_dashboard() -> dict:
    node = '{instance="$instance"}'
    finished = (f"rate(tasker_tasks_succeeded_total{node}[$__rate_interval])"
                f" or rate(tasker_tasks_failed_total{node}[$__rate_interval])")

    overview = [
        stat("Scrape", f'up{{job="{WORKER_JOB}", instance="$instance"}}',
             steps=((None, RED), (1, GREEN)),
             mappings=[{"type": "value", "options": {
                 "0": {"text": "DOWN", "index": 0}, "1": {"text": "UP", "index": 1}}}]),
        stat("Uptime", f"time() - tasker_worker_start_time_seconds{node}", unit="dtdurations"),
        stat("Handlers", f"sum(tasker_worker_handlers{node})"),
        stat("Processing rate", f"tasker_worker_processing_rate{node}", unit="ops"),
        stat("Memory", f"tasker_worker_memory_bytes{node}", unit="bytes"),
        stat("Event-path deliveries", f"tasker_worker_deployment_mode_score{node}",
             unit="percentunit",
             description="Executions delivered by the event path / (event + polling recovery).",
             steps=((None, RED), (0.9, YELLOW), (0.99, GREEN))),
        info_table("Worker", f"tasker_worker_info{node}",
                   hide=["Time", "Value", "__name__", "job"]),
    ]

    throughput = [
        timeseries("Finished per task", [
            target(f"sum by (task) (rate(tasker_tasks_succeeded_total{node}[$__rate_interval]))",
                   "{{task}} succeeded"),
            target("sum by (task, exception) "
                   f"(rate(tasker_tasks_failed_total{node}[$__rate_interval]))",
                   "{{task}} failed: {{exception}}"),
        ], unit="ops"),
        timeseries("Received and started", [
            target(f"sum by (queue) (rate(tasker_tasks_received_total{node}[$__rate_interval]))",
                   "received {{queue}}"),
            target(f"sum by (queue) (rate(tasker_tasks_started_total{node}[$__rate_interval]))",
                   "started {{queue}}"),
        ], unit="ops"),
        timeseries("Processing rate vs Prometheus rate()", [
            target(f"tasker_worker_processing_rate{node}", "processing_rate (sliding window)"),
            target(f"sum({finished})", "rate() of finished"),
        ], unit="ops"),
        timeseries("Retried, revoked and rejected", [
            target(f"sum by (task) (rate(tasker_tasks_retried_total{node}[$__rate_interval]))",
                   "retried {{task}}"),
            target(f"sum by (task) (rate(tasker_tasks_revoked_total{node}[$__rate_interval]))",
                   "revoked {{task}}"),
            target(f"sum by (reason) (rate(tasker_tasks_rejected_total{node}[$__rate_interval]))",
                   "rejected: {{reason}}"),
        ], unit="ops"),
    ]

    latency = [
        timeseries("Latency EMA", [
            target(f"tasker_worker_latency_ema_seconds{node}", "EMA"),
        ], unit="s", width=8),
        timeseries("Runtime p50 / p95 / p99",
                   percentiles("tasker_task_runtime_seconds", "", node), unit="s", width=8),
        timeseries("Queue wait p50 / p95 / p99",
                   percentiles("tasker_task_queue_wait_seconds", "", node), unit="s", width=8),
        timeseries("Runtime p95 per task", [
            target(quantile(0.95, "tasker_task_runtime_seconds", "task", node), "{{task}}"),
        ], unit="s"),
        timeseries("Queue wait p95 per task", [
            target(quantile(0.95, "tasker_task_queue_wait_seconds", "task", node), "{{task}}"),
        ], unit="s"),
    ]

    pool = [
        timeseries("Pool processes", [
            target(f"tasker_worker_pool_processes{node}", "processes"),
            target(f"tasker_worker_pool_busy_processes{node}", "busy"),
        ], width=8),
        timeseries("Pool utilization", [
            target(f"tasker_worker_pool_utilization{node}", "utilization"),
        ], unit="percentunit", max_value=1, width=8),
        timeseries("Active, reserved and scheduled tasks", [
            target(f"tasker_worker_tasks_active{node}", "active"),
            target(f"tasker_worker_tasks_reserved{node}", "reserved"),
            target(f"tasker_worker_tasks_scheduled{node}", "scheduled"),
        ], width=8),
        timeseries("Pool process exits by reason", [
            target("sum by (reason) "
                   f"(increase(tasker_worker_process_exits_total{node}[$__rate_interval]))",
                   "{{reason}}"),
        ], bars=True, stack=True,
            description="recycled (max tasks/memory per child), lost (signal, OOM), error."),
        timeseries("Handlers by namespace", [
            target(f"tasker_worker_handlers{node}", "{{namespace}}"),
        ], stack=True),
    ]

    database = [
        timeseries("DB pool connections", [
            target(f"tasker_db_pool_size{node}", "size"),
            target(f"tasker_db_pool_available{node}", "available"),
            target(f"tasker_db_pool_max{node}", "max"),
        ], width=8, overrides=[limit_line("max")]),
        timeseries("DB pool utilization", [
            target(f"tasker_db_pool_utilization{node}", "utilization"),
        ], unit="percentunit", max_value=1, limit=0.8, width=8),
        timeseries("Callers waiting for a connection", [
            target(f"tasker_db_pool_requests_waiting{node}", "waiting"),
        ], width=8),
        timeseries("Connection wait p50 / p95 / p99",
                   percentiles("tasker_db_pool_wait_seconds", "", node), unit="s"),
        timeseries("DB pool errors by kind", [
            target(f"sum by (kind) (rate(tasker_db_pool_errors_total{node}[$__rate_interval]))",
                   "{{kind}}"),
        ], unit="ops"),
    ]

    return dashboard(
        NODE_UID, "tasker / Node $instance",
        "One tasker worker node: its tasks, latency, pool processes and database pool.",
        [
            query_variable("instance", "Node",
                           f'label_values(tasker_worker_info{{job="{WORKER_JOB}"}}, instance)',
                           multi=False),
        ],
        [
            ("Node", overview),
            ("Tasks", throughput),
            ("Latency", latency),
            ("Pool processes", pool),
            ("Database pool", database),
        ],
        links=[{"title": "Fleet", "type": "link", "icon": "dashboard",
                "url": f"/d/{FLEET_UID}/tasker-fleet", "keepTime": True}],
    )


DASHBOARDS = {
    "tasker-fleet.json": fleet_dashboard,
    "tasker-node.json": node_dashboard,
}


def render(build) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed dashboard differs from the generated one")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)

    stale = []
    for name, build in DASHBOARDS.items():
        path = args.out_dir / name
        text = render(build)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        names = ", ".join(str(p) for p in stale)
        print(f"out of date: {names}; run python {Path(__file__).name}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
