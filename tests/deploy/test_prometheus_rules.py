"""Prometheus config, recording and alert rules, and the Grafana dashboards.

promtool validates the config and rules and runs the rule unit tests in
deploy/prometheus/tests/. Every PromQL query of both dashboards is parsed by
promtool and then run, together with the rules, against a real Prometheus
server that scrapes two fake worker nodes exporting every SPEC metric. Every
metric name a rule or dashboard uses must exist (SPEC §4/§5, a recording rule,
`up` or Flower's own `flower_*`).

Needs Debian's `prometheus` package (promtool and the server); the tests fail,
not skip, without it.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from servers import binary, prometheus_config, start_prometheus

REPO = Path(__file__).resolve().parents[2]
PROM_DIR = REPO / "deploy" / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))
DASHBOARD_DIR = REPO / "deploy" / "grafana" / "dashboards"
DASHBOARD_FILES = sorted(DASHBOARD_DIR.glob("*.json"))
BUILD_SCRIPT = REPO / "deploy" / "grafana" / "build_dashboards.py"
INSTALL_HINT = "install it with `apt-get install -y prometheus` (Debian's package ships both)"
RUNBOOK_BASE = "https://github.com/tasker/tasker/blob/main/docs/operations.md#alert-"

#: SPEC §4 (worker node) and §5 (fleet) metrics: name -> (type, label names).
SPEC_METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tasker_tasks_received_total": ("counter", ("task", "queue")),
    "tasker_tasks_started_total": ("counter", ("task", "queue")),
    "tasker_tasks_succeeded_total": ("counter", ("task", "queue")),
    "tasker_tasks_failed_total": ("counter", ("task", "queue", "exception")),
    "tasker_tasks_retried_total": ("counter", ("task", "queue")),
    "tasker_tasks_revoked_total": ("counter", ("task", "queue")),
    "tasker_tasks_rejected_total": ("counter", ("reason",)),
    "tasker_task_runtime_seconds": ("histogram", ("task", "queue")),
    "tasker_task_queue_wait_seconds": ("histogram", ("task", "queue")),
    "tasker_worker_info": ("gauge", ("worker", "version", "pool", "concurrency")),
    "tasker_worker_start_time_seconds": ("gauge", ("worker",)),
    "tasker_worker_tasks_active": ("gauge", ("worker",)),
    "tasker_worker_tasks_reserved": ("gauge", ("worker",)),
    "tasker_worker_tasks_scheduled": ("gauge", ("worker",)),
    "tasker_worker_pool_processes": ("gauge", ("worker",)),
    "tasker_worker_pool_busy_processes": ("gauge", ("worker",)),
    "tasker_worker_pool_utilization": ("gauge", ("worker",)),
    "tasker_worker_processing_rate": ("gauge", ("worker",)),
    "tasker_worker_latency_ema_seconds": ("gauge", ("worker",)),
    "tasker_worker_handlers": ("gauge", ("worker", "namespace")),
    "tasker_worker_process_exits_total": ("counter", ("worker", "reason")),
    "tasker_worker_deployment_mode_score": ("gauge", ("worker",)),
    "tasker_worker_memory_bytes": ("gauge", ("worker",)),
    "tasker_db_pool_size": ("gauge", ("worker",)),
    "tasker_db_pool_available": ("gauge", ("worker",)),
    "tasker_db_pool_max": ("gauge", ("worker",)),
    "tasker_db_pool_requests_waiting": ("gauge", ("worker",)),
    "tasker_db_pool_utilization": ("gauge", ("worker",)),
    "tasker_db_pool_wait_seconds": ("histogram", ("worker",)),
    "tasker_db_pool_errors_total": ("counter", ("worker", "kind")),
    "tasker_queue_depth": ("gauge", ("queue",)),
    "tasker_queue_oldest_message_age_seconds": ("gauge", ("queue",)),
    "tasker_queue_unacked": ("gauge", ("queue",)),
    "tasker_queue_consumers": ("gauge", ("queue",)),
    "tasker_db_connections": ("gauge", ("state",)),
    "tasker_db_max_connections": ("gauge", ()),
    "tasker_sample_up": ("gauge", ("source",)),
    "tasker_sample_duration_seconds": ("gauge", ("source",)),
    "tasker_sample_timestamp_seconds": ("gauge", ("source",)),
    # Beat entries (tasker/schedule_monitor.py), recorded by the node that starts a run.
    "tasker_schedule_last_start_timestamp_seconds": ("gauge", ("entry",)),
    "tasker_schedule_period_seconds": ("gauge", ("entry",)),
    "tasker_schedule_lateness_seconds": ("histogram", ("entry",)),
    "tasker_schedule_missed_total": ("counter", ("entry",)),
}


def _spec_series_names() -> set[str]:
    names = set()
    for name, (kind, _labels) in SPEC_METRICS.items():
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


# --- tools --------------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool() -> str:
    return binary("promtool", INSTALL_HINT)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def _assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (
        f"{' '.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    )


# --- PromQL helpers -------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a tokenizer, not a full parser).

    Drops strings, label matchers, ranges, grouping clauses and offsets, then keeps
    identifiers that are neither keywords nor function calls.
    """
    s = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+-?[0-9a-z]+", " ", s)
    names = set()
    for match in re.finditer(r"(?<![0-9A-Za-z_.:])[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = match.group(0)
        if token.lower() in _KEYWORDS or s[match.end():].lstrip().startswith("("):
            continue
        names.add(token)
    return names


def test_metric_name_extractor() -> None:
    assert metric_names(
        'histogram_quantile(0.95, sum by (task, le) (rate(tasker_task_runtime_seconds_bucket'
        '{task=~"$task", queue!="x"}[5m])))'
    ) == {"tasker_task_runtime_seconds_bucket"}
    assert metric_names(
        'a:b:c > 3 * avg_over_time(m_total[1d] offset 10m) and on (x) group_left(y) '
        'absent(up{job="w"} == 1) or vector(1e3) unless bool time() - z'
    ) == {"a:b:c", "m_total", "up", "z"}
    assert metric_names("sum(x) by (task) / ignoring(le) y") == {"x", "y"}


_TEMPLATE_DEFAULTS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "task": ".*",
    "queue": ".*",
}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:regex}) with concrete values."""
    def repl(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise AssertionError(f"unknown Grafana variable ${name} in {expr!r}")
        return values[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target."""
    return [(p["title"], t["expr"]) for p in all_panels(dashboard) for t in p.get("targets", [])]


def variable_selectors(dashboard: dict) -> list[str]:
    """The series selector of each label_values(...) variable query."""
    selectors = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"] if isinstance(variable["query"], str) else \
            variable["query"]["query"]
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
        assert match, f"unsupported variable query {query!r}"
        selectors.append(match.group(1))
    return selectors


def recording_rule_names() -> set[str]:
    names = set()
    for path in RULE_FILES:
        names.update(re.findall(r"^\s*-\s*record:\s*(\S+)\s*$", path.read_text(), re.M))
    return names


def alert_names() -> list[str]:
    names = []
    for path in RULE_FILES:
        names.extend(re.findall(r"^\s*-\s*alert:\s*(\S+)\s*$", path.read_text(), re.M))
    return names


def _yaml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML scalar


# --- promtool ---------------------------------------------------------------------

def test_files_exist() -> None:
    assert (PROM_DIR / "prometheus.yml").is_file()
    assert [p.name for p in RULE_FILES] == ["tasker-alerts.yml", "tasker-recording.yml"]
    assert RULE_TEST_FILES, "no promtool unit tests in deploy/prometheus/tests"
    assert [p.name for p in DASHBOARD_FILES] == ["tasker-fleet.json", "tasker-node.json"]


def test_promtool_check_config(promtool: str) -> None:
    result = _run([promtool, "check", "config", str(PROM_DIR / "prometheus.yml")])
    _assert_ok(result)
    # rule_files in prometheus.yml must pick up both rule files.
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    _assert_ok(_run([promtool, "check", "rules", *map(str, RULE_FILES)]))


def test_promtool_test_rules(promtool: str) -> None:
    result = _run([promtool, "test", "rules", *map(str, RULE_TEST_FILES)])
    _assert_ok(result)
    assert "FAILED" not in result.stdout


def test_every_alert_fires_and_stays_silent_in_unit_tests() -> None:
    text = "\n".join(p.read_text() for p in RULE_TEST_FILES)
    cases = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:\s*(\[\])?", text)
    firing = {name for name, empty in cases if not empty}
    silent = {name for name, empty in cases if empty}
    names = alert_names()
    assert len(names) == len(set(names)), "duplicate alert names"
    assert not set(names) - firing, f"alerts never tested firing: {set(names) - firing}"
    assert not set(names) - silent, f"alerts never tested silent: {set(names) - silent}"
    assert not (firing | silent) - set(names), "tests name alerts that do not exist"


def test_every_recording_rule_has_a_value_test() -> None:
    text = "\n".join(p.read_text() for p in RULE_TEST_FILES)
    tested = set()
    for expr in re.findall(r"^\s*-\s*expr:\s*(.+)$", text, re.M):
        tested |= metric_names(expr)
    missing = recording_rule_names() - tested
    assert not missing, f"recording rules without a promql_expr_test: {sorted(missing)}"


def test_dashboards_are_generated_from_the_script() -> None:
    result = _run([sys.executable, str(BUILD_SCRIPT), "--check"])
    assert result.returncode == 0, (
        f"dashboard JSON is out of date with {BUILD_SCRIPT.name}: {result.stderr}"
    )


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard["uid"] == path.stem
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    provisioning = (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert f"uid: {ds['current']['value']}" in provisioning, "default data source uid differs"

    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in all_panels(dashboard):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for t in panel["targets"]:
            assert t["datasource"] == panel["datasource"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs))

    used = set()
    for _title, expr in dashboard_queries(dashboard):
        used.update(re.findall(r"\$\{?(\w+)", expr))
    undefined = used - set(variables) - {k for k in _TEMPLATE_DEFAULTS if k.startswith("__")}
    assert not undefined, f"queries use undefined variables {undefined}"


def test_node_dashboard_is_per_instance() -> None:
    dashboard = load_dashboard(DASHBOARD_DIR / "tasker-node.json")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["instance"]["type"] == "query"
    assert not variables["instance"]["multi"]
    for title, expr in dashboard_queries(dashboard):
        assert 'instance="$instance"' in expr, f"panel {title!r} is not filtered by node"


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    return {p.name: load_dashboard(p) for p in DASHBOARD_FILES}


def test_dashboard_queries_parse(promtool: str, dashboards: dict[str, dict],
                                 tmp_path: Path) -> None:
    """Each panel query (variables substituted) as a recording rule: promtool parses it."""
    lines = ["groups:", "  - name: dashboard-queries", "    rules:"]
    values = {**_TEMPLATE_DEFAULTS, "instance": "10.0.0.11:9800"}
    count = 0
    for name, dashboard in dashboards.items():
        exprs = [e for _t, e in dashboard_queries(dashboard)] + variable_selectors(dashboard)
        for expr in exprs:
            count += 1
            lines.append(f"      - record: dashboard:query_{count}")
            lines.append(f"        expr: {_yaml_str(substitute(expr, values))}")
            lines.append(f"        labels: {{dashboard: {_yaml_str(name)}}}")
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text("\n".join(lines) + "\n")
    result = _run([promtool, "check", "rules", str(rules)])
    _assert_ok(result)
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_every_metric_name_is_known(dashboards: dict[str, dict]) -> None:
    known = _spec_series_names() | recording_rule_names() | {"up"}
    exprs: list[tuple[str, str]] = []
    for path in RULE_FILES:
        text = path.read_text()
        # `expr: |` blocks and one-line exprs: take the indented block after expr:.
        for match in re.finditer(r"^(\s*)expr:\s*(\|)?(.*)\n((?:\1\s+.*\n|\s*\n)*)", text, re.M):
            body = match.group(4) if match.group(2) else match.group(3)
            exprs.append((path.name, body))
    for name, dashboard in dashboards.items():
        exprs += [(name, e) for _t, e in dashboard_queries(dashboard)]
        exprs += [(name, e) for e in variable_selectors(dashboard)]
    assert len(exprs) > 60
    unknown = {}
    for where, expr in exprs:
        for metric in metric_names(expr):
            if metric not in known and not metric.startswith("flower_"):
                unknown.setdefault(metric, where)
    assert not unknown, f"metric names not in SPEC §4/§5 nor recording rules: {unknown}"


def test_alert_annotations_and_runbooks() -> None:
    text = (PROM_DIR / "rules" / "tasker-alerts.yml").read_text()
    blocks = re.split(r"^\s*-\s*alert:\s*", text, flags=re.M)[1:]
    assert len(blocks) == len(alert_names()) >= 11
    for block in blocks:
        name = block.split()[0]
        for key in ("summary:", "description:", "runbook_url:"):
            assert key in block, f"{name} has no {key}"
        assert re.search(r"severity:\s*(warning|critical)\s*$", block, re.M), name
        runbook = re.search(r'runbook_url:\s*"([^"]+)"', block).group(1)
        assert runbook == RUNBOOK_BASE + name.lower(), f"{name}: {runbook}"


# --- a real Prometheus --------------------------------------------------------------

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class FakeNode:
    """A worker node's /metrics: every SPEC metric, moving a little at each scrape.

    Written as exposition text directly rather than with prometheus_client, whose
    value storage would follow a PROMETHEUS_MULTIPROC_DIR set by other tests.
    """

    def __init__(self, worker: str, *, fleet_sampler: bool) -> None:
        self.worker = worker
        self.fleet_sampler = fleet_sampler
        self.started = time.time()
        self.lock = threading.Lock()
        self.values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {
            name: {} for name in SPEC_METRICS
        }
        self.histograms: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {
            name: {} for name, (kind, _l) in SPEC_METRICS.items() if kind == "histogram"
        }

    def _key(self, name: str, labels: dict[str, str]) -> tuple[tuple[str, str], ...]:
        assert set(labels) == set(SPEC_METRICS[name][1]), (name, labels)
        return tuple(sorted(labels.items()))

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        key = self._key(name, labels)
        self.values[name][key] = self.values[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        self.values[name][self._key(name, labels)] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        state = self.histograms[name].setdefault(self._key(name, labels),
                                                 [0.0] * (len(_BUCKETS) + 1))
        for i, bound in enumerate(_BUCKETS):
            if value <= bound:
                state[i] += 1
        state[-1] += value  # the _sum

    def tick(self) -> None:
        w = self.worker
        for task in ("diagnostics.noop", "diagnostics.fail"):
            tq = {"task": task, "queue": "celery"}
            for name in ("tasker_tasks_received_total", "tasker_tasks_started_total",
                         "tasker_tasks_succeeded_total"):
                self.inc(name, 20, **tq)
            for name in ("tasker_tasks_retried_total", "tasker_tasks_revoked_total"):
                self.inc(name, **tq)
            self.inc("tasker_tasks_failed_total", exception="ValueError", **tq)  # < 5%
            self.observe("tasker_task_runtime_seconds", 0.02, **tq)
            self.observe("tasker_task_runtime_seconds", 0.3, **tq)
            self.observe("tasker_task_queue_wait_seconds", 0.004, **tq)
        self.inc("tasker_tasks_rejected_total", reason="unknown_task")
        self.inc("tasker_worker_process_exits_total", worker=w, reason="recycled")
        self.inc("tasker_db_pool_errors_total", worker=w, kind="timeout")
        self.observe("tasker_db_pool_wait_seconds", 0.001, worker=w)
        gauges = {
            "tasker_worker_start_time_seconds": self.started,
            "tasker_worker_tasks_active": 1, "tasker_worker_tasks_reserved": 2,
            "tasker_worker_tasks_scheduled": 0, "tasker_worker_pool_processes": 2,
            "tasker_worker_pool_busy_processes": 1, "tasker_worker_pool_utilization": 0.5,
            "tasker_worker_processing_rate": 6.0, "tasker_worker_latency_ema_seconds": 0.16,
            "tasker_worker_deployment_mode_score": 1.0, "tasker_worker_memory_bytes": 9.5e7,
            "tasker_db_pool_size": 2, "tasker_db_pool_available": 1, "tasker_db_pool_max": 8,
            "tasker_db_pool_requests_waiting": 0, "tasker_db_pool_utilization": 0.125,
        }
        for name, value in gauges.items():
            self.set(name, value, worker=w)
        self.set("tasker_worker_info", 1, worker=w, version="0.1.0", pool="prefork",
                 concurrency="2")
        self.set("tasker_worker_handlers", 4, worker=w, namespace="diagnostics")
        now = time.time()
        for source in ("broker", "database", "records"):
            # Node b sampled an hour ago and has not run a sample round since.
            self.set("tasker_sample_up", 1, source=source)
            self.set("tasker_sample_duration_seconds", 0.01, source=source)
            self.set("tasker_sample_timestamp_seconds",
                     now if self.fleet_sampler else now - 3600, source=source)
        if self.fleet_sampler:
            for queue, depth in (("celery", 3), ("bulk", 0)):
                self.set("tasker_queue_depth", depth, queue=queue)
                self.set("tasker_queue_oldest_message_age_seconds", 0.2, queue=queue)
                self.set("tasker_queue_unacked", 1, queue=queue)
                self.set("tasker_queue_consumers", 2, queue=queue)
            self.set("tasker_db_connections", 3, state="active")
            self.set("tasker_db_connections", 5, state="idle")
            self.set("tasker_db_max_connections", 100)
        # Beat entries run by this node: on time, none missed.
        for entry, period in (("tasker.recover_steps", 10.0), ("nightly.report", 86400.0)):
            self.set("tasker_schedule_period_seconds", period, entry=entry)
            self.set("tasker_schedule_last_start_timestamp_seconds", now, entry=entry)
            self.inc("tasker_schedule_missed_total", 0, entry=entry)
            self.observe("tasker_schedule_lateness_seconds", 0.004, entry=entry)

    @staticmethod
    def _line(name: str, labels: tuple[tuple[str, str], ...], value: float) -> str:
        inner = ",".join(f'{k}="{v}"' for k, v in labels)
        return f"{name}{{{inner}}} {value!r}\n" if inner else f"{name} {value!r}\n"

    def exposition(self) -> bytes:
        with self.lock:
            self.tick()
            out = []
            for name, (kind, _labels) in SPEC_METRICS.items():
                out.append(f"# TYPE {name} {kind}\n")
                for key, value in self.values[name].items():
                    out.append(self._line(name, key, value))
                for key, state in self.histograms.get(name, {}).items():
                    for bound, count in zip(_BUCKETS, state, strict=False):
                        le = "+Inf" if bound == float("inf") else repr(bound)
                        out.append(self._line(f"{name}_bucket", (*key, ("le", le)), count))
                    out.append(self._line(f"{name}_count", key, state[len(_BUCKETS) - 1]))
                    out.append(self._line(f"{name}_sum", key, state[-1]))
            return "".join(out).encode()


def _serve(node: FakeNode) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            body = node.exposition()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class LivePrometheus:
    def __init__(self, url: str, instances: list[str]) -> None:
        self.url = url
        self.instances = instances

    def get(self, path: str, **params: str) -> dict:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.load(response)

    def query(self, expr: str) -> dict:
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error
            return json.load(exc)


@pytest.fixture(scope="module")
def live_prometheus(tmp_path_factory) -> Iterator[LivePrometheus]:
    """A Prometheus server with the repo's rules, scraping two fake worker nodes."""
    work = tmp_path_factory.mktemp("prometheus")
    servers = [_serve(FakeNode("celery@fake-a", fleet_sampler=True)),
               _serve(FakeNode("celery@fake-b", fleet_sampler=False))]
    targets = [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    config = prometheus_config(work / "prometheus.yml", targets, RULE_FILES)
    try:
        with start_prometheus(config, work) as prometheus:
            prom = LivePrometheus(prometheus.url, targets)
            deadline = time.monotonic() + 30
            while True:
                assert prometheus.process.poll() is None, prometheus.log_tail()
                with contextlib.suppress(OSError, ValueError):
                    # Both nodes scraped at least 4 times and every rule evaluated.
                    up = prom.query('count_over_time(up{job="tasker-worker"}[1m]) >= 4')
                    rules = prom.get("/api/v1/rules")["data"]["groups"]
                    evaluated = all(r["health"] != "unknown" for g in rules for r in g["rules"])
                    if len(up["data"]["result"]) == 2 and evaluated:
                        time.sleep(2)  # two more rounds of rules over the full data
                        break
                assert time.monotonic() < deadline, "Prometheus did not scrape the fake nodes"
                time.sleep(0.25)
            yield prom
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def test_live_rules_are_healthy(live_prometheus: LivePrometheus) -> None:
    groups = live_prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules if r["type"] == "alerting"} == set(alert_names())
    assert {r["name"] for r in rules if r["type"] == "recording"} == recording_rule_names()
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, f"rules failing on real data: {broken}"


def test_live_recording_rules_produce_series(live_prometheus: LivePrometheus) -> None:
    empty = [name for name in sorted(recording_rule_names())
             if not live_prometheus.query(name)["data"]["result"]]
    assert not empty, f"recording rules with no series on a healthy fake fleet: {empty}"


def test_live_no_alert_fires_on_a_healthy_fleet(live_prometheus: LivePrometheus) -> None:
    alerts = live_prometheus.get("/api/v1/alerts")["data"]["alerts"]
    assert not alerts, f"alerts active (pending or firing) on a healthy fake fleet: {alerts}"


@pytest.mark.parametrize("name", [p.name for p in DASHBOARD_FILES])
def test_live_dashboard_queries_return_data(live_prometheus: LivePrometheus,
                                            dashboards: dict[str, dict], name: str) -> None:
    dashboard = dashboards[name]
    # Resolve the variables the way Grafana does, from label_values().
    values = dict(_TEMPLATE_DEFAULTS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector = variable_selectors({"templating": {"list": [variable]}})[0]
        label = re.search(r",\s*(\w+)\)\s*$", variable["query"]).group(1)
        found = live_prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert found["data"], f"variable {variable['name']} has no values"
        if not variable.get("multi"):
            values[variable["name"]] = sorted(found["data"])[0]
    if name == "tasker-node.json":
        assert set(live_prometheus.instances) <= set(
            live_prometheus.get("/api/v1/label/instance/values")["data"])

    problems = []
    for title, expr in dashboard_queries(dashboard):
        answer = live_prometheus.query(substitute(expr, values))
        if answer.get("status") != "success":
            problems.append(f"{title}: {expr}: {answer.get('error')}")
        elif not answer["data"]["result"]:
            problems.append(f"{title}: {expr}: no data")
    assert not problems, "\n".join(problems)


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def test_runbook_anchors_exist_in_the_operations_doc() -> None:
    runbook = REPO / "docs" / "operations.md"
    text = runbook.read_text(encoding="utf-8") if runbook.is_file() else ""
    headings = re.findall(r"^#+\s+(Alert: .+?)\s*$", text, re.M)
    assert headings, "docs/operations.md has no '### Alert: <name>' runbook sections"
    anchors = {_github_anchor(h) for h in headings}
    missing = [n for n in alert_names() if f"alert-{n.lower()}" not in anchors]
    assert not missing, f"docs/operations.md lacks runbook sections for {missing}"
