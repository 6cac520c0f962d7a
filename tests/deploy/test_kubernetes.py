"""deploy/kubernetes: rendered, validated offline, and its PromQL run for real.

* Every overlay is rendered with Debian's ``kubectl kustomize`` and every object
  validated offline: core kinds with PyPI's ``kubernetes-validate`` (strict:
  unknown fields fail), the KEDA and Prometheus Operator custom resources with
  their CRDs' JSON Schemas (deploy/kubernetes/schemas/, strict too).
* The PrometheusRule is generated from deploy/prometheus/rules/ (one source):
  a test fails when they differ.
* The ScaledObject's queries and the PrometheusRule's rules are checked by
  ``promtool`` and then run in a real Prometheus that scrapes a real worker
  node (with a bearer token, as the PodMonitor does) while beat's fleet sampler
  measures a backlog: the scaling queries rise with the backlog and fall to 0.

Needs kubectl, promtool/prometheus (Debian) and kubernetes-validate (dev
extra); the tests fail, not skip, without them (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from servers import binary, start_beat, start_prometheus, stop_group

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
SCHEMAS = K8S / "schemas"
RULE_DIR = REPO / "deploy" / "prometheus" / "rules"
OVERLAYS = ("base", "overlays/keda", "overlays/hpa")
#: Kubernetes version whose bundled schemas the core objects are checked against
#: (autoscaling/v2, policy/v1 unhealthyPodEvictionPolicy: 1.27+).
KUBE_VERSION = "1.30.0"
CRD_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobject_v1alpha1.json",
    ("monitoring.coreos.com/v1", "PodMonitor"): "monitoring.coreos.com_podmonitor_v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"):
        "monitoring.coreos.com_prometheusrule_v1.json",
}
WORKER_LABELS = {"app.kubernetes.io/name": "tasker", "app.kubernetes.io/component": "worker"}
#: BENCHMARKS.md section 8 (python -m bench.shared_memory): KiB of the metrics
#: directory per task name a pool process has run (57 classic buckets).
KIB_PER_TASK_NAME = 25
SIZED_FOR_TASK_NAMES = 1000

sys.path.insert(0, str(K8S))
import build_prometheusrule  # noqa: E402  (deploy/kubernetes is not a package)


def _render(kubectl: str, directory: str) -> list[dict[str, Any]]:
    result = subprocess.run([kubectl, "kustomize", str(K8S / directory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = binary("kubectl", "apt-get install -y kubectl")
    return {d: _render(kubectl, d) for d in OVERLAYS}


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


# --- offline schema validation ---------------------------------------------------

def _validate(doc: dict[str, Any]) -> list[str]:
    """Schema errors of one object (empty when valid)."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        import jsonschema

        schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text(encoding="utf-8"))
        validator = jsonschema.validators.validator_for(schema)(schema)
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[dev]'",
                    pytrace=False)
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [str(exc)]
    return []


@pytest.mark.parametrize("directory", OVERLAYS)
def test_every_object_is_valid_offline(rendered, directory: str) -> None:
    docs = rendered[directory]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs}
    assert kinds & set(CRD_SCHEMAS), "no custom resource rendered"
    problems = {f"{d['kind']}/{d['metadata']['name']}": errors
                for d in docs if (errors := _validate(d))}
    assert not problems, json.dumps(problems, indent=1)


def test_the_validators_reject_a_broken_object(rendered) -> None:
    """The checks above would fail: an unknown field, a wrong type, per validator."""
    docs = rendered["overlays/keda"]
    worker = copy.deepcopy(_one(docs, "Deployment", "tasker-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}  # typo
    assert _validate(worker)
    scaled = copy.deepcopy(_one(docs, "ScaledObject", "tasker-worker"))
    scaled["spec"]["minReplicaCount"] = "1"
    assert _validate(scaled)
    monitor = copy.deepcopy(_one(docs, "PodMonitor", "tasker-worker"))
    monitor["spec"]["podMetricsEndpoints"][0]["bearerTokenSecrett"] = {}
    assert _validate(monitor)
    rule = copy.deepcopy(_one(docs, "PrometheusRule", "tasker"))
    del rule["spec"]["groups"][0]["name"]
    assert _validate(rule)


def test_overlays_set_namespace_image_and_leave_replicas_to_the_autoscaler(rendered) -> None:
    for overlay, autoscaler in (("overlays/keda", "ScaledObject"),
                                ("overlays/hpa", "HorizontalPodAutoscaler")):
        docs = rendered[overlay]
        assert {d["metadata"].get("namespace") for d in docs} == {"tasker"}, overlay
        worker = _one(docs, "Deployment", "tasker-worker")
        assert "replicas" not in worker["spec"], f"{overlay}: apply would reset the autoscaler"
        assert _one(docs, "Deployment", "tasker-beat")["spec"]["replicas"] == 1
        target = _one(docs, autoscaler, "tasker-worker")["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", "tasker-worker")
        for doc in docs:
            if doc["kind"] in ("Deployment", "Job"):
                for c in _containers(doc):
                    assert c["image"].startswith("registry.example.com/tasker:"), c["image"]


# --- what the objects promise ------------------------------------------------------

def test_worker_pod(rendered) -> None:
    worker = _one(rendered["base"], "Deployment", "tasker-worker")
    pod = worker["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    # Warm shutdown: SIGTERM goes straight to celery (no shell), and running
    # tasks get minutes, not the default 30 s.
    assert pod["terminationGracePeriodSeconds"] >= 120
    (container,) = pod["containers"]
    assert container["command"][:4] == ["celery", "-A", "tasker", "worker"]
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {e["name"]: e for e in container["env"]}
    assert env["TASKER_METRICS_BIND"]["value"] == "0.0.0.0"
    assert container["ports"][0]["containerPort"] == int(env["TASKER_METRICS_PORT"]["value"])

    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    metrics = volumes[mounts[env["PROMETHEUS_MULTIPROC_DIR"]["value"]]]["emptyDir"]
    assert metrics["medium"] == "Memory"
    concurrency = int(container["command"][container["command"].index("-c") + 1])
    # (C + 2 processes being replaced) x N task names x 25 KiB, rounded up to a
    # power of two; it counts against the memory limit, which must hold it.
    needed_mib = (concurrency + 2) * SIZED_FOR_TASK_NAMES * KIB_PER_TASK_NAME / 1024
    size_mib = int(metrics["sizeLimit"].removesuffix("Mi"))
    assert size_mib == 2 ** math.ceil(math.log2(needed_mib)), (size_mib, needed_mib)
    assert int(container["resources"]["limits"]["memory"].removesuffix("Mi")) >= 4 * size_mib

    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert set(mounts) >= {"/tmp", env["PROMETHEUS_MULTIPROC_DIR"]["value"]}

    # Readiness follows the broker (/healthz 503); liveness must not.
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/healthz" and ready["port"] == "metrics"
    assert "httpGet" not in container["livenessProbe"]


@pytest.mark.parametrize("status, alive", [(200, True), (503, True), (500, False),
                                           (None, False)])
def test_liveness_probe_accepts_a_broker_outage(rendered, status: int | None,
                                                alive: bool) -> None:
    """The probe's own script, run against a /healthz answering ``status``."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    worker = _one(rendered["base"], "Deployment", "tasker-worker")
    command = worker["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"][
        "command"]
    assert command[:2] == ["python", "-c"]
    script = command[2]
    server = None
    if status is not None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
    else:
        import socket

        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    try:
        result = subprocess.run([sys.executable, "-c", script.replace("9800", str(port))],
                                capture_output=True, timeout=30)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    assert (result.returncode == 0) is alive, result.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_real_node_without_its_broker_is_unready_but_alive(rendered, start_node) -> None:
    """What the probes do during a broker outage, on a real worker node: the
    readiness probe's /healthz answers 503 (NotReady), the liveness probe's
    script exits 0 (no restart)."""
    from support import http_get, wait_for

    worker = _one(rendered["base"], "Deployment", "tasker-worker")
    container = worker["spec"]["template"]["spec"]["containers"][0]
    script = container["livenessProbe"]["exec"]["command"][2]
    path = container["readinessProbe"]["httpGet"]["path"]
    node = start_node(env={"TASKER_BROKER_URL": "redis://127.0.0.1:1/0"}, wait=False)

    def answers() -> int | None:
        try:
            return http_get(f"{node.url}{path}", timeout=2)[0]
        except OSError:
            return None
    assert wait_for(answers, timeout=60, interval=0.3, message="/healthz answering") == 503
    result = subprocess.run([sys.executable, "-c", script.replace("9800", str(node.port))],
                            capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert node.proc is not None and node.proc.poll() is None


def test_beat_is_a_single_replica_that_never_overlaps(rendered) -> None:
    beat = _one(rendered["base"], "Deployment", "tasker-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["spec"]["template"]["spec"]["containers"][0]["command"][3] == "beat"
    tolerations = {t["key"]: t["tolerationSeconds"]
                   for t in beat["spec"]["template"]["spec"]["tolerations"]}
    assert tolerations["node.kubernetes.io/unreachable"] <= 60


def test_secrets_are_referenced_never_inlined(rendered) -> None:
    for directory, docs in rendered.items():
        assert not [d for d in docs if d["kind"] == "Secret"], directory
        for doc in docs:
            if doc["kind"] not in ("Deployment", "Job"):
                continue
            for c in _containers(doc):
                for e in c.get("env", []):
                    secret = any(w in e["name"] for w in ("URL", "TOKEN", "PASSWORD", "AUTH"))
                    if secret:
                        assert "secretKeyRef" in e.get("valueFrom", {}), (doc["metadata"], e)
    # The PodMonitor's bearer token is the workers' TASKER_METRICS_TOKEN.
    docs = rendered["base"]
    worker = _one(docs, "Deployment", "tasker-worker")
    env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    token_ref = env["TASKER_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    endpoint = _one(docs, "PodMonitor", "tasker-worker")["spec"]["podMetricsEndpoints"][0]
    assert endpoint["authorization"]["type"] == "Bearer"
    assert endpoint["authorization"]["credentials"] == token_ref


def test_selectors_match_the_pods(rendered) -> None:
    docs = rendered["base"]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
            for d in docs if d["kind"] == "Deployment"}

    def selects(selector: dict[str, str]) -> set[str]:
        return {n for n, labels in pods.items() if selector.items() <= labels.items()}

    assert selects(_one(docs, "Service", "tasker-worker")["spec"]["selector"]) == \
        {"tasker-worker"}
    assert selects(_one(docs, "Service", "tasker-flower")["spec"]["selector"]) == \
        {"tasker-flower"}
    assert selects(_one(docs, "PodDisruptionBudget", "tasker-worker")["spec"]["selector"][
        "matchLabels"]) == {"tasker-worker"}
    for name in ("tasker-worker", "tasker-flower"):
        monitor = _one(docs, "PodMonitor", name)
        assert selects(monitor["spec"]["selector"]["matchLabels"]) == {name}
        ports = {p["name"] for c in _one(docs, "Deployment", name)["spec"]["template"]["spec"][
            "containers"] for p in c["ports"]}
        endpoint = monitor["spec"]["podMetricsEndpoints"][0]
        assert endpoint["port"] in ports
        # Rules and dashboards select job="tasker-worker" / job="flower".
        assert endpoint["relabelings"] == [{"action": "replace", "targetLabel": "job",
                                            "replacement": name.replace("tasker-flower",
                                                                        "flower")}]


def test_network_policy_lets_only_prometheus_reach_the_metrics_port(rendered) -> None:
    docs = rendered["base"]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == WORKER_LABELS
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9800}]
    (peer,) = rule["from"]
    # Both selectors in one peer: Prometheus pods AND in its namespace (two
    # peers would let either in: any pod of that namespace).
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer and "ipBlock" not in peer


def test_pdb_and_scaled_object_bounds(rendered) -> None:
    pdb = _one(rendered["base"], "PodDisruptionBudget", "tasker-worker")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    scaled = _one(rendered["overlays/keda"], "ScaledObject", "tasker-worker")["spec"]
    # The sampler runs in a worker: scaling to 0 would leave no signal.
    assert scaled["minReplicaCount"] >= 1
    assert scaled["fallback"]["replicas"] >= 1
    for trigger in scaled["triggers"]:
        assert trigger["type"] == "prometheus"
        assert trigger["metadata"]["ignoreNullValues"] == "false"  # missing data -> fallback
    assert _one(rendered["overlays/hpa"], "HorizontalPodAutoscaler",
                "tasker-worker")["spec"]["minReplicas"] >= 1


# --- one source for the rules ---------------------------------------------------

def test_prometheusrule_is_generated_from_the_rule_files(rendered) -> None:
    result = subprocess.run([sys.executable, str(K8S / "build_prometheusrule.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = [g for p in sorted(RULE_DIR.glob("*.yml"))
                for g in yaml.safe_load(p.read_text(encoding="utf-8"))["groups"]]
    rule = _one(rendered["overlays/keda"], "PrometheusRule", "tasker")
    assert rule["spec"]["groups"] == expected


def test_a_changed_rule_file_makes_the_check_fail(tmp_path: Path) -> None:
    for path in RULE_DIR.glob("*.yml"):
        shutil.copy(path, tmp_path / path.name)
    assert build_prometheusrule.render(tmp_path) == build_prometheusrule.OUT.read_text()
    alerts = tmp_path / "tasker-alerts.yml"
    alerts.write_text(alerts.read_text().replace("> 300", "> 301", 1))
    assert build_prometheusrule.render(tmp_path) != build_prometheusrule.OUT.read_text()


# --- promtool ------------------------------------------------------------------------

def scaling_queries(docs: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """Trigger name -> (PromQL, threshold) of the ScaledObject."""
    scaled = _one(docs, "ScaledObject", "tasker-worker")
    return {t["name"]: (t["metadata"]["query"], float(t["metadata"]["threshold"]))
            for t in scaled["spec"]["triggers"]}


ADAPTER_RULES = K8S / "overlays" / "hpa" / "prometheus-adapter-rules.yaml"


def adapter_queries(queue: str = "celery") -> dict[str, str]:
    """External metric name -> PromQL, as prometheus-adapter fills its templates
    for an HPA selector ``queue: <queue>``."""
    rules = yaml.safe_load(ADAPTER_RULES.read_text(encoding="utf-8"))["externalRules"]
    return {r["name"]["as"]: r["metricsQuery"].replace("<<.Series>>", r["seriesQuery"])
            .replace("<<.LabelMatchers>>", f'queue="{queue}"') for r in rules}


def test_adapter_rules_serve_the_hpa_metrics(rendered) -> None:
    hpa = _one(rendered["overlays/hpa"], "HorizontalPodAutoscaler", "tasker-worker")
    wanted = {m["external"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    queries = adapter_queries()
    assert set(queries) == wanted
    assert not any("<<" in q for q in queries.values())


def _rule_file(rendered, path: Path) -> Path:
    """The PrometheusRule's groups plus the KEDA and adapter queries as recording rules."""
    docs = rendered["overlays/keda"]
    groups = list(_one(docs, "PrometheusRule", "tasker")["spec"]["groups"])
    groups.append({"name": "keda-scaling-queries", "rules": [
        {"record": f"keda:{name.replace('-', '_')}", "expr": query}
        for name, (query, _t) in scaling_queries(docs).items()]})
    groups.append({"name": "adapter-queries", "rules": [
        {"record": f"adapter:{name}", "expr": query}
        for name, query in adapter_queries().items()]})
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def test_promtool_checks_the_rules_and_scaling_queries(rendered, tmp_path: Path) -> None:
    promtool = binary("promtool", "apt-get install -y prometheus")
    rules = _rule_file(rendered, tmp_path / "k8s-rules.yml")
    result = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- a real Prometheus scraping a real worker under load -----------------------------

class Prom:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            return json.load(response)

    def value(self, expr: str) -> float | None:
        result = self.get("/api/v1/query", query=expr)["data"]["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def live(rendered, start_node, tmp_path: Path) -> Iterator[tuple[Prom, Any, str]]:
    """Private Redis, a worker node (with a metrics token) consuming `celery`,
    beat sampling every 2 s, and Prometheus scraping the node every second
    with the PrometheusRule's rules loaded."""
    from support import wait_for

    from tasker.cli.embedded_services import EmbeddedRedis

    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(EmbeddedRedis(tmp_path / "redis"))
        url = f"redis://127.0.0.1:{redis_server.port}/0"
        token = "k8s-test-token"
        env = {"TASKER_BROKER_URL": url, "TASKER_SAMPLE_INTERVAL": "2",
               "TASKER_METRICS_TOKEN": token}
        node = start_node(queue="celery", env=env)
        beat = start_beat({**node.env, **env}, tmp_path / "beat.log",
                          schedule=tmp_path / "schedule")
        token_file = tmp_path / "token"
        token_file.write_text(token)
        rules = _rule_file(rendered, tmp_path / "rules.yml")
        config = tmp_path / "prometheus.yml"
        # The scrape the PodMonitor describes: job tasker-worker, bearer token.
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{
                "job_name": "tasker-worker",
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)},
                "static_configs": [{"targets": [f"127.0.0.1:{node.port}"]}]}],
        }))
        server = stack.enter_context(start_prometheus(config, tmp_path / "prometheus"))
        prom = Prom(server.url)
        try:
            def sampled_and_scraped() -> bool:
                assert server.process.poll() is None, server.log_tail()
                try:
                    return prom.value('tasker:queue_depth:max{queue="celery"}') is not None
                except OSError:
                    return False
            wait_for(sampled_and_scraped, timeout=60, interval=0.5,
                     message="a fleet sample of `celery` in Prometheus")
            yield prom, node, url
        finally:
            stop_group(beat)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_scaling_queries_rise_with_a_backlog_and_fall_to_zero(rendered, live) -> None:
    from celery import Celery

    prom, node, url = live
    keda = scaling_queries(rendered["overlays/keda"])
    assert set(keda) == {"queue-depth", "queue-age"}
    queries = {**keda, **{f"adapter {n}": (q, 0.0) for n, q in adapter_queries().items()}}
    # Idle: every query answers 0 (not "no data", which KEDA treats as an error).
    for name, (query, _t) in queries.items():
        assert prom.value(query) == 0, name

    tasks = 1500  # about 15-20 s of work for -c 2 at 20 ms a task
    publisher = Celery("publisher", broker=url)
    with publisher.producer_or_acquire() as producer:
        for _ in range(tasks):
            publisher.send_task("diagnostics.sleep", args=(0.02,), queue="celery",
                                producer=producer)

    peaks = dict.fromkeys(queries, 0.0)
    zero_since: float | None = None
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        values = {name: prom.value(q) for name, (q, _t) in queries.items()}
        assert None not in values.values(), values  # a fresh sample all along
        for name, value in values.items():
            peaks[name] = max(peaks[name], value)
        if all(v == 0 for v in values.values()) and peaks["queue-depth"] > 0:
            zero_since = zero_since or time.monotonic()
            if time.monotonic() - zero_since > 3:  # stays at 0 over a sample
                break
        else:
            zero_since = None
        time.sleep(0.5)
    assert zero_since is not None, f"the queries did not fall to 0: peaks {peaks}"
    print(f"scaling query peaks during the backlog: {peaks}")

    # The backlog asked for more nodes than the one running: depth over its
    # threshold (200 a node), and the oldest message waited over a second.
    depth_peak = peaks["queue-depth"]
    assert depth_peak > keda["queue-depth"][1], peaks
    assert depth_peak <= tasks
    assert math.ceil(depth_peak / keda["queue-depth"][1]) >= 2
    assert peaks["queue-age"] > 1.0, peaks
    # The HPA overlay's metrics, through the adapter's queries, saw the same.
    assert peaks["adapter tasker_queue_depth"] > keda["queue-depth"][1], peaks
    assert peaks["adapter tasker_queue_oldest_message_age_seconds"] > 1.0, peaks
    total = sum(v for (n, _l), v in node.scrape().items()
                if n == "tasker_tasks_succeeded_total")
    assert total >= tasks

    # Every alert and recording rule of the PrometheusRule evaluated cleanly on
    # the real node's series.
    groups = prom.get("/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) > 20
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
