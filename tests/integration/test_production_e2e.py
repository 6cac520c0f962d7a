"""The production path end to end: a real worker node, Flower and Prometheus.

One real ``celery -A tasker worker`` prefork node (``start_node``), a real
Flower started with the repo's ``flower.conf`` against the same broker, and a
real Prometheus server on loopback that loads the repo's recording and alert
rules and scrapes both (job names and metrics paths as in
``deploy/prometheus/prometheus.yml``, 1 s scrape and rule intervals).

Rate queries are checked for exact values: a warm-up run creates every task's
series, and each ``rate()`` is evaluated at the timestamp of a scrape taken
after the load with a window that starts exactly at a scrape taken before it,
so Prometheus' ``rate() * window`` is the counter's increase between the two
scrapes and must equal the difference of the node's own ``/metrics``.

Needs Debian's ``prometheus`` package; the tests fail, not skip, without it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Samples, WorkerNode, free_port, http_get, total, wait_for

PROM_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = REPO / "deploy" / "prometheus" / "rules"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
FLOWER_CONF = REPO / "flower.conf"
FLOWER_USER, FLOWER_PASSWORD = "ops", "e2e-secret"

#: The main load (after a warm-up run of one of each).
NOOPS, FAILS, SLEEPS, SLEEP_SECONDS = 200, 20, 20, 0.05
LOAD_TASKS = ("diagnostics.noop", "diagnostics.fail", "diagnostics.sleep")
#: A series only a successful scrape of the node stores (`up` exists for failed ones too).
NODE_SCRAPED = 'tasker_worker_info{job="tasker-worker"}'
COUNTERS = ("tasker_tasks_received_total", "tasker_tasks_started_total",
            "tasker_tasks_succeeded_total", "tasker_tasks_failed_total")


# --- processes ----------------------------------------------------------------------

@dataclass
class Service:
    """A server subprocess in its own session, stopped with its whole process group."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, name: str, argv: list[str], log_path: Path,
              env: dict[str, str] | None = None) -> Service:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, proc, log_path)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # stragglers of the group
        except ProcessLookupError:
            pass
        self.proc.wait()


def _prometheus_bin() -> str:
    path = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if path is None:
        pytest.fail("prometheus not found: install it with `apt-get install -y prometheus`",
                    pytrace=False)
    return path


def _repo_jobs() -> dict[str, str]:
    """job_name -> metrics_path of the repo's Prometheus config (no YAML parser here)."""
    jobs: dict[str, str] = {}
    text = PROM_CONFIG.read_text()
    for block in re.split(r"^\s*-\s*job_name:\s*", text, flags=re.M)[1:]:
        name = block.split()[0].strip("\"'")
        path = re.search(r"^\s*metrics_path:\s*(\S+)", block, re.M)
        jobs[name] = path.group(1).strip("\"'") if path else "/metrics"
    return jobs


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    status, _, body = http_get(url, headers)
    assert status == 200, (url, status, body[:500])
    return json.loads(body)


class Prometheus:
    def __init__(self, service: Service, url: str) -> None:
        self.service = service
        self.url = url

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, _, body = http_get(f"{self.url}{path}?{query}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (path, params, answer)
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector of ``expr`` (at ``at``, Unix seconds, or now)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("/api/v1/query", **params)
        assert data["resultType"] == "vector", (expr, data)
        return data["result"]

    def values(self, expr: str, at: float | None = None,
               key: Callable[[dict[str, str]], Any] | None = None) -> dict[Any, float]:
        """{key(labels) or frozenset(labels): value} of an instant query."""
        out: dict[Any, float] = {}
        for series in self.query(expr, at):
            labels = series["metric"]
            out[key(labels) if key else frozenset(labels.items())] = float(series["value"][1])
        return out

    def scalar(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def last_scrape(self, selector: str) -> float:
        """Timestamp (Unix s, ms precision) of the newest stored sample of ``selector``."""
        return self.scalar(f"max(timestamp({selector}))") or 0.0

    def scrape_after(self, moment: float, selector: str = NODE_SCRAPED,
                     timeout: float = 15.0) -> float:
        """Wait for a stored, successful scrape (``selector``) that started after ``moment``."""
        return wait_for(lambda: (t := self.last_scrape(selector)) > moment and t, timeout, 0.1,
                        f"a scrape of {selector} after {moment:.3f}")


@dataclass
class Stack:
    node: WorkerNode
    flower: Service
    flower_url: str
    prometheus: Prometheus

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.node.port}"


def _flower_auth() -> dict[str, str]:
    token = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _start_flower(node: WorkerNode, tmp_path: Path) -> tuple[Service, str]:
    port = free_port()
    env = {**node.env, "FLOWER_PERSISTENT": "false", "FLOWER_DB": str(tmp_path / "flower.db"),
           "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}"}
    env.pop("FLOWER_UNAUTHENTICATED_API", None)  # the API must ask for the credentials
    env.pop("TASKER_METRICS_PORT", None)
    flower = Service.start("flower", [
        sys.executable, "-m", "celery", "-A", "tasker", "flower", f"--conf={FLOWER_CONF}",
        f"--port={port}", "--address=127.0.0.1"], tmp_path / "flower.log", env)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        flower.check_alive()
        try:
            return http_get(f"{url}/healthcheck", timeout=2)[0] == 200
        except OSError:
            return False
    try:
        wait_for(ready, 30, 0.2, "Flower to answer /healthcheck")
    except BaseException:
        flower.stop()
        raise
    return flower, url


def _start_prometheus(tmp_path: Path, node_port: int, flower_port: int) -> Prometheus:
    jobs = _repo_jobs()
    assert {"tasker-worker", "flower"} <= set(jobs), f"jobs in {PROM_CONFIG}: {jobs}"
    targets = {"tasker-worker": f"127.0.0.1:{node_port}", "flower": f"127.0.0.1:{flower_port}"}
    work = tmp_path / "prometheus"
    work.mkdir()
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n  scrape_timeout: 1s\n"
        f"rule_files:\n  - {json.dumps(str(RULES_DIR / '*.yml'))}\n"
        "scrape_configs:\n" + "".join(
            f"  - job_name: {job}\n    metrics_path: {jobs[job]}\n"
            f"    static_configs:\n      - targets: [{json.dumps(target)}]\n"
            for job, target in targets.items()))
    port = free_port()
    service = Service.start("prometheus", [
        _prometheus_bin(), f"--config.file={config}", f"--storage.tsdb.path={work / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        work / "prometheus.log")
    prom = Prometheus(service, f"http://127.0.0.1:{port}")

    def ready() -> bool:
        service.check_alive()
        try:
            return http_get(f"{prom.url}/-/ready", timeout=2)[0] == 200
        except OSError:
            return False
    try:
        wait_for(ready, 30, 0.1, "Prometheus to be ready")
    except BaseException:
        service.stop()
        raise
    return prom


@pytest.fixture
def stack(start_node: Callable[..., WorkerNode], tmp_path: Path) -> Iterator[Stack]:
    """Node, Flower (flower.conf, basic auth) and Prometheus, all scraped once."""
    node = start_node(concurrency=2)
    services: list[Service] = []
    try:
        flower, flower_url = _start_flower(node, tmp_path)
        services.append(flower)
        prom = _start_prometheus(tmp_path, node.port, int(flower_url.rsplit(":", 1)[1]))
        services.append(prom.service)
        wait_for(lambda: prom.values('up == 1', key=lambda m: m["job"]).keys()
                 >= {"tasker-worker", "flower"}, 20, 0.2, "both jobs scraped and up")
        yield Stack(node, flower, flower_url, prom)
    finally:
        for service in reversed(services):
            service.stop()


# --- the load -----------------------------------------------------------------------

def _finished(samples: Samples) -> float:
    return (total(samples, "tasker_tasks_succeeded_total")
            + total(samples, "tasker_tasks_failed_total"))


def _wait_idle(node: WorkerNode, received: int, timeout: float = 30.0) -> Samples:
    """Scrape the node until it received ``received`` tasks and finished them all."""
    def idle() -> Samples | None:
        samples = node.scrape()
        done = (total(samples, "tasker_tasks_received_total") == received
                and total(samples, "tasker_tasks_started_total") == received
                and _finished(samples) == received
                and total(samples, "tasker_worker_tasks_active") == 0)
        return samples if done else None
    return wait_for(idle, timeout, 0.1, f"{node.name} to finish {received} tasks")


def _warm_up(stack: Stack, app: Any) -> tuple[Samples, float]:
    """One run of every load task plus one fleet sample round: every series exists.

    Returns the node's counters and the timestamp of a Prometheus scrape that
    saw exactly them, taken before anything else was published.
    """
    node = stack.node
    app.send_task("tasker.sample_fleet", queue=node.queue)
    app.send_task("diagnostics.noop", queue=node.queue)
    app.send_task("diagnostics.fail", args=("warm-up",), queue=node.queue)
    app.send_task("diagnostics.sleep", args=(SLEEP_SECONDS,), queue=node.queue)
    before = _wait_idle(node, 4)
    assert ("tasker_queue_depth", frozenset({("queue", node.queue)})) in before, \
        "the fleet sample round did not export the node's queue"
    idle_at = time.time()
    scraped = stack.prometheus.scrape_after(idle_at)
    return before, scraped


def _publish_load(app: Any, queue: str) -> int:
    for i in range(NOOPS):
        app.send_task("diagnostics.noop", queue=queue)
        if i % (NOOPS // SLEEPS) == 0:
            app.send_task("diagnostics.sleep", args=(SLEEP_SECONDS,), queue=queue)
        if i % (NOOPS // FAILS) == 0:
            app.send_task("diagnostics.fail", args=(f"e2e {i}",), queue=queue)
    return NOOPS + SLEEPS + FAILS


# --- dashboards ---------------------------------------------------------------------

def _dashboard_exprs(name: str) -> dict[tuple[str, str], str]:
    """(panel title, legendFormat) -> expr of every target of one dashboard."""
    dashboard = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    return {(p["title"], t.get("legendFormat", "")): t["expr"]
            for p in panels for t in p.get("targets", [])}


def _substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana variables ($x, ${x}, ${x:fmt}) -> concrete values."""
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr!r}"
        return values[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)


def _close(actual: float | None, expected: float, rel: float = 1e-3) -> bool:
    return actual is not None and actual == pytest.approx(expected, rel=rel, abs=1e-9)


def _by(*names: str) -> Callable[[dict[str, str]], Any]:
    return lambda labels: tuple(labels.get(n, "") for n in names) if len(names) > 1 \
        else labels.get(names[0], "")


def _deltas(before: Samples, after: Samples, name: str, *by: str) -> dict[Any, float]:
    """Increase of ``name`` between two scrapes of the node, summed by labels ``by``."""
    out: dict[Any, float] = {}
    for (metric, labels), value in after.items():
        if metric != name:
            continue
        key = tuple(dict(labels).get(n, "") for n in by)
        key = key[0] if len(by) == 1 else key
        out[key] = out.get(key, 0.0) + value - before.get((metric, labels), 0.0)
    return out


# --- tests --------------------------------------------------------------------------

def test_prometheus_rules_and_dashboards_on_a_real_node(stack: Stack, app: Any) -> None:
    node, prom = stack.node, stack.prometheus
    before, start = _warm_up(stack, app)

    sent = _publish_load(app, node.queue)
    after = _wait_idle(node, 4 + sent)
    end = prom.scrape_after(time.time())
    dt = end - start
    # The window starts 1 ms before the scrape at `start`, so it holds exactly the
    # scrapes from `start` to `end`: rate() * dt is the increase between them.
    window = f"{round(dt * 1000) + 1}ms"

    # --- the scrape itself and the raw counters ---
    assert prom.values('up{job="tasker-worker"}', at=end, key=_by("instance")) == \
        {stack.instance: 1.0}
    assert prom.values('up{job="flower"}', at=end, key=_by("job")) == {"flower": 1.0}
    for name in COUNTERS:
        want = _deltas({}, after, name, "task")
        got = prom.values(f"sum by (task) ({name})", at=end, key=_by("task"))
        assert got == want, (name, got, want)
    succeeded = {k: v for k, v in _deltas(before, after, "tasker_tasks_succeeded_total",
                                          "task").items() if v}  # every task starts at 0
    assert succeeded == {"diagnostics.noop": NOOPS, "diagnostics.sleep": SLEEPS}
    assert _deltas(before, after, "tasker_tasks_failed_total", "task", "exception") == {
        ("diagnostics.fail", "DiagnosticFailure"): FAILS}

    # --- recording rules (5m windows over the whole run), once evaluated after `end` ---
    def rules_evaluated() -> bool:
        groups = prom.api("/api/v1/rules")["groups"]
        return all(g["lastEvaluation"] and _rfc3339(g["lastEvaluation"]) > end + 0.5
                   for g in groups)
    wait_for(rules_evaluated, 10, 0.2, "a rule evaluation after the load")
    groups = prom.api("/api/v1/rules")["groups"]
    broken = {r["name"]: r.get("lastError") for g in groups for r in g["rules"]
              if r["health"] != "ok"}
    assert not broken, f"rules failing on a real node: {broken}"

    task = _by("task")
    ratio = prom.values("tasker:task_failure_ratio:rate5m", key=task)
    assert ratio.get("diagnostics.fail") == pytest.approx(1.0), ratio
    assert ratio.get("diagnostics.noop") == 0.0, ratio
    assert ratio.get("diagnostics.sleep") == 0.0, ratio
    throughput = prom.values("tasker:task_throughput:rate5m", key=task)
    # 20 failures in a 5 m window are at least 20 / 300 per second (extrapolation only adds).
    assert throughput.get("diagnostics.noop", 0) >= NOOPS / 300, throughput
    assert throughput.get("diagnostics.sleep", 0) >= SLEEPS / 300, throughput
    assert throughput.get("diagnostics.fail", 0) >= FAILS / 300, throughput
    failures = prom.values("tasker:task_failures:rate5m", key=task)
    assert failures.get("diagnostics.fail") == pytest.approx(throughput["diagnostics.fail"])
    assert failures.get("diagnostics.noop", 0.0) == 0.0, failures

    p95 = prom.values("tasker:task_runtime_seconds:p95", key=task)
    assert SLEEP_SECONDS < p95.get("diagnostics.sleep", 0) <= 0.25, p95
    assert p95.get("diagnostics.noop", 1) < SLEEP_SECONDS, p95
    p50 = prom.values("tasker:task_runtime_seconds:p50", key=task)
    assert SLEEP_SECONDS < p50.get("diagnostics.sleep", 0) <= p95["diagnostics.sleep"], p50
    wait_p95 = prom.values("tasker:task_queue_wait_seconds:p95", key=task)
    assert set(LOAD_TASKS) <= set(wait_p95), wait_p95

    depth = prom.values("tasker:queue_depth:max", key=_by("queue"))
    assert node.queue in depth, depth
    assert depth[node.queue] == total(after, "tasker_queue_depth", queue=node.queue)
    assert prom.scalar("tasker:worker_nodes_up:sum") == 1.0
    assert prom.scalar("tasker:worker_pool_utilization:fleet") is not None
    age = prom.values("tasker:sample_age_seconds:min", key=_by("source"))
    assert {"broker", "database"} <= set(age) and max(age.values()) < 45, age

    # Alerts on real data: only the failure ratio of diagnostics.fail, and it waits
    # for its 10 minutes (`for: 10m`).
    # The sampler also reports other queues of the shared test broker (the default
    # `celery` queue, queues of other tests' workers): their alerts are not ours.
    # Alert groups may be evaluated before the recording rules they read caught up
    # with the load (a busy machine): wait for an evaluation that sees them.
    def ours() -> list[dict]:
        return [a for a in prom.api("/api/v1/alerts")["alerts"]
                if a["labels"].get("queue", node.queue) == node.queue]
    alerts = wait_for(ours, 15, 0.2, "an alert evaluation over the recorded rates")
    active = {(a["labels"]["alertname"], a["labels"].get("task"), a["state"]) for a in alerts}
    assert active == {("TaskerTaskFailureRatioHigh", "diagnostics.fail", "pending")}, alerts

    # --- dashboard queries, evaluated at `end` over [start, end] ---
    rate = {"tasker_tasks_succeeded_total": _deltas(before, after,
                                                    "tasker_tasks_succeeded_total", "task"),
            "tasker_tasks_failed_total": _deltas(before, after, "tasker_tasks_failed_total",
                                                 "task", "exception")}
    finished = sum(rate["tasker_tasks_succeeded_total"].values()) + \
        sum(rate["tasker_tasks_failed_total"].values())
    assert finished == sent

    fleet = _dashboard_exprs("tasker-fleet.json")
    fleet_values = {"__rate_interval": window, "__interval": window, "task": ".*",
                    "queue": ".*"}

    def fleet_query(title: str, legend: str = "__auto", **key: Any) -> dict[Any, float]:
        return prom.values(_substitute(fleet[(title, legend)], fleet_values), at=end, **key)

    assert fleet_query("Worker nodes up") == {frozenset(): 1.0}
    [got] = fleet_query("Finished tasks").values()
    assert _close(got * dt, finished), (got * dt, finished)
    [got] = fleet_query("Failure ratio").values()
    assert _close(got, FAILS / finished), (got, FAILS / finished)
    got = fleet_query("Succeeded per task", "{{task}}", key=task)
    assert got.keys() == rate["tasker_tasks_succeeded_total"].keys(), got
    for name, increase in rate["tasker_tasks_succeeded_total"].items():
        assert _close(got[name] * dt, increase), (name, got[name] * dt, increase)
    got = fleet_query("Failed per task and exception", "{{task}}: {{exception}}",
                      key=_by("task", "exception"))
    assert got.keys() == rate["tasker_tasks_failed_total"].keys(), got
    for labels, increase in rate["tasker_tasks_failed_total"].items():
        assert _close(got[labels] * dt, increase), (labels, got[labels] * dt, increase)
    got = fleet_query("Queue depth", "{{queue}}", key=_by("queue"))
    want = {dict(ls)["queue"]: v for (n, ls), v in after.items() if n == "tasker_queue_depth"}
    assert got == want and node.queue in got, (got, want)
    got = fleet_query("Server connections vs max_connections", "max_connections")
    assert got == {frozenset(): total(after, "tasker_db_max_connections")} and \
        list(got.values())[0] > 0, got
    # A concrete multi-value selection as Grafana's Prometheus data source writes it
    # for =~: regex-escaped, in parentheses, the backslash doubled in the PromQL string.
    picked = {"task": r"(diagnostics\\.noop|diagnostics\\.sleep)"}
    got = prom.values(_substitute(fleet[("Succeeded per task", "{{task}}")],
                                  {**fleet_values, **picked}), at=end, key=task)
    assert got.keys() == {"diagnostics.noop", "diagnostics.sleep"}, got

    node_dash = _dashboard_exprs("tasker-node.json")
    instances = prom.api("/api/v1/label/instance/values",
                         **{"match[]": 'tasker_worker_info{job="tasker-worker"}'})
    assert instances == [stack.instance], instances
    node_values = {"__rate_interval": window, "__interval": window, "instance": stack.instance}

    def node_query(title: str, legend: str = "__auto", **key: Any) -> dict[Any, float]:
        return prom.values(_substitute(node_dash[(title, legend)], node_values), at=end, **key)

    snapshot = node.snapshot()
    assert node_query("Scrape") == {frozenset({("job", "tasker-worker"),
                                               ("instance", stack.instance),
                                               ("__name__", "up")}): 1.0}
    [got] = node_query("Handlers").values()
    assert got == total(after, "tasker_worker_handlers") == snapshot["handler_count"] > 0
    [got] = node_query("Pool processes", "processes").values()
    assert got == total(after, "tasker_worker_pool_processes") == snapshot["pool_processes"] == 2
    [info] = prom.query(_substitute(node_dash[("Worker", "__auto")], node_values), at=end)
    assert info["metric"]["worker"] == node.hostname and info["metric"]["pool"] == "prefork"
    for legend, name in (("received {{queue}}", "tasker_tasks_received_total"),
                         ("started {{queue}}", "tasker_tasks_started_total")):
        got = node_query("Received and started", legend, key=_by("queue"))
        want = _deltas(before, after, name, "queue")
        assert got.keys() == want.keys() == {node.queue}, (got, want)
        assert want[node.queue] == sent, want
        assert _close(got[node.queue] * dt, sent), (legend, got[node.queue] * dt, sent)
    [got] = node_query("Processing rate vs Prometheus rate()", "rate() of finished").values()
    assert _close(got * dt, finished), (got * dt, finished)


def test_flower_shows_the_node_with_its_tasker_snapshot(stack: Stack, app: Any) -> None:
    node, prom = stack.node, stack.prometheus
    for _ in range(5):
        app.send_task("diagnostics.noop", queue=node.queue)
    app.send_task("diagnostics.fail", queue=node.queue)
    _wait_idle(node, 6)
    snapshot = node.snapshot()
    assert snapshot["total_runs"] == 6

    # flower.conf's basic_auth guards the API, not /metrics.
    api = f"{stack.flower_url}/api/workers"
    assert http_get(f"{api}?refresh=1")[0] == 401
    assert http_get(f"{stack.flower_url}/metrics")[0] == 200

    workers = _get_json(f"{api}?refresh=1", _flower_auth())
    assert node.hostname in workers, sorted(workers)
    one = _get_json(f"{api}?refresh=1&workername={urllib.parse.quote(node.hostname)}",
                    _flower_auth())
    assert list(one) == [node.hostname], list(one)
    for listing in (workers, one):
        stats = listing[node.hostname]["stats"]
        tasker = stats["tasker"]
        assert tasker["worker"] == node.hostname, tasker
        assert tasker["total_runs"] == snapshot["total_runs"] == 6, tasker
        assert (tasker["succeeded"], tasker["failed"]) == (5, 1), tasker
        assert tasker["handler_count"] == snapshot["handler_count"], tasker
        assert stats["pool"]["max-concurrency"] == 2, stats["pool"]
        assert any(q["name"] == node.queue for q in listing[node.hostname]["active_queues"])

    # Flower follows the node's heartbeat events (task events stay off: flower.conf).
    status = _get_json(f"{api}?status=1", _flower_auth())
    assert status.get(node.hostname) is True, status

    # Prometheus scrapes Flower's own /metrics without credentials, and sees the node.
    assert prom.scalar('up{job="flower"}') == 1.0
    online = f'flower_worker_online{{job="flower", worker="{node.hostname}"}}'
    wait_for(lambda: prom.scalar(online) == 1.0, 15, 0.2, online)


def _rfc3339(stamp: str) -> float:
    """Prometheus' RFC 3339 timestamps (nanoseconds, Z or offset) -> Unix seconds."""
    from datetime import datetime

    match = re.fullmatch(r"(.*?\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    assert match, stamp
    base, frac, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp() + float(f"0.{frac or 0}")
