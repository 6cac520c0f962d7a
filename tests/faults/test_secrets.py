"""Secrets sweep: a password in every URL never shows up in anything tasker prints or serves.

The broker is a private Redis started with ``--requirepass``, so the password is really
needed (and used) by every component; PostgreSQL (trust auth) gets a URL with a password
too. Everything the worker, beat, Flower, the sampler, ``tasker stats``/``sample``/
``submit``/``status``/``migrate``/``demo`` write is collected: log files, stdout and
stderr, ``/metrics``, ``/metrics.json``, ``inspect stats``, Flower's API, error output of
unreachable services. The password must appear nowhere, and the collected output must be
substantial (and mention the services) so that the sweep could fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, SESSION, free_port, http_get, parse_metrics, total, wait_for

from tasker.cli.embedded_services import EmbeddedRedis

PASSWORD = "S3cretPw-XYZ"
#: A password holding characters that need percent-encoding (``@``, ``:``, ``/``).
ODD_PASSWORD = "S3cret@Pw:9/XYZ"
ODD_ENCODED = "S3cret%40Pw%3A9%2FXYZ"
FORBIDDEN = (PASSWORD, ODD_PASSWORD, ODD_ENCODED, "S3cret")


class _PasswordRedis(EmbeddedRedis):
    """A private Redis that refuses clients without the password."""

    def _prepare(self) -> list[str]:
        return [*super()._prepare(), "--requirepass", PASSWORD]

    @property
    def url(self) -> str:
        return f"redis://:{PASSWORD}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_PasswordRedis]:
    server = _PasswordRedis(tmp_path_factory.mktemp("redis-secret"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def secret_env(private_redis: _PasswordRedis, database_url: str) -> dict[str, str]:
    """Environment with a password in every URL (broker, result backend, database)."""
    import redis

    # The private server is ours alone: start every test from an empty one.
    client = redis.Redis.from_url(private_redis.url)
    client.flushall()
    client.close()
    db_name = database_url.rsplit("/", 1)[1]
    return {
        **os.environ,
        "TASKER_BROKER_URL": private_redis.url,
        "TASKER_RESULT_BACKEND": private_redis.url.replace("/0", "/1"),
        "TASKER_DATABASE_URL": f"postgresql://root:{PASSWORD}@127.0.0.1:5432/{db_name}",
        "TASKER_LOG_FORMAT": "json",
        "TASKER_SAMPLE_INTERVAL": "1",
        "TASKER_RECOVERY_INTERVAL": "1",
        "TASKER_METRICS_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    }


class Collected:
    """Everything the product printed or served during one test."""

    def __init__(self, dump: Path | None = None) -> None:
        self.parts: dict[str, str] = {}
        self.dump = dump  # everything collected is also written here, to read after a failure

    def add(self, label: str, text: str | bytes) -> str:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self.parts[f"{len(self.parts):02d} {label}"] = text
        return text

    def add_run(self, label: str, result: subprocess.CompletedProcess[str]) -> None:
        self.add(f"{label} stdout", result.stdout)
        self.add(f"{label} stderr", result.stderr)

    def add_files(self, label: str, directory: Path) -> None:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and path.suffix in (".log", ".txt", ".out", ""):
                self.add(f"{label} {path.name}", path.read_bytes())

    def assert_clean(self, *must_mention: str, min_chars: int = 2000) -> None:
        everything = "\n".join(self.parts.values())
        if self.dump is not None:
            self.dump.write_text("".join(f"===== {label}\n{text}\n"
                                         for label, text in self.parts.items()))
        leaks = [(label, _around(text, secret)) for label, text in self.parts.items()
                 for secret in FORBIDDEN if secret in text]
        assert not leaks, f"password leaked in: {leaks[:5]}"
        assert len(everything) >= min_chars, {k: len(v) for k, v in self.parts.items()}
        for needle in must_mention:
            assert needle in everything, f"nothing mentions {needle!r}: the sweep saw too little"


def _around(text: str, secret: str) -> str:
    at = text.index(secret)
    return text[max(0, at - 150):at + 50]


def _run(argv: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _tasker(args: list[str], env: dict[str, str], timeout: float = 60
            ) -> subprocess.CompletedProcess:
    return _run(["-m", "tasker.cli.main", *args], env, timeout)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


def _scrape_all(collected: Collected, label: str, url: str) -> dict[str, Any]:
    status, _, body = http_get(f"{url}/metrics", timeout=30)
    assert status == 200
    parse_metrics(collected.add(f"{label} /metrics", body))
    status, _, body = http_get(f"{url}/metrics.json", timeout=30)
    assert status == 200
    snapshot = json.loads(collected.add(f"{label} /metrics.json", body))
    status, _, body = http_get(f"{url}/healthz", timeout=30)
    collected.add(f"{label} /healthz", body)
    return snapshot


@pytest.mark.slow
def test_worker_beat_sampler_and_cli_never_print_the_password(start_node, secret_env, tmp_path):
    collected = Collected(tmp_path / "collected.txt")
    queue = f"{SESSION}-secret"
    # The node also consumes the default queue: beat's samples and workflow steps land there.
    node = start_node(queue=f"{queue},celery", env=secret_env)
    beat_log = tmp_path / "beat.log"
    with beat_log.open("ab") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasker", "beat", "--loglevel", "DEBUG",
             "--schedule", str(tmp_path / "beat-schedule")],
            cwd=REPO, env=secret_env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        from celery import Celery

        client = Celery("secrets-client", broker=secret_env["TASKER_BROKER_URL"])
        client.send_task("diagnostics.noop", queue=queue)
        client.send_task("diagnostics.hold_db", args=(0.2,), queue=queue)  # uses the db URL
        client.send_task("diagnostics.fail", args=(f"see {secret_env['TASKER_DATABASE_URL']}",),
                         queue=queue)  # a task that puts a URL in its own error message
        client.send_task("no.such.task", queue=queue)
        submitted = _tasker(["submit", "linear.sequence", "--context", '{"n": 2}', "--wait",
                             "30"], secret_env)
        collected.add_run("tasker submit", submitted)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        task_uuid = json.loads(submitted.stdout.splitlines()[0])["task_uuid"]

        # Beat schedules samples; the node runs them with both passwords in play.
        def sampled() -> bool:
            return sum(e.get("event") == "sample.completed" for e in node.log_events()) >= 2
        wait_for(sampled, timeout=45, interval=0.5, message="two beat-scheduled samples")
        wait_for(lambda: node.snapshot()["total_runs"] >= 5, timeout=30, message="tasks ran")
        snap = _scrape_all(collected, "worker", node.url)
        assert snap["failed"] >= 1 and snap["queues"], snap
        assert total(parse_metrics(collected.parts[next(k for k in collected.parts
                                                        if k.endswith("worker /metrics"))]),
                     "tasker_sample_up", source="database") == 1

        status = _tasker(["status", task_uuid], secret_env)
        collected.add_run("tasker status", status)
        assert status.returncode == 0 and task_uuid in status.stdout, status.stderr[-2000:]
        sample = _tasker(["sample", "--once"], secret_env)
        collected.add_run("tasker sample", sample)
        sample_json = _tasker(["sample", "--once", "--json"], secret_env)
        collected.add_run("tasker sample --json", sample_json)
        doc = json.loads(sample_json.stdout)
        assert sample.returncode == 0 and "broker" in json.dumps(doc), sample.stderr[-2000:]
        for args in (["stats", f"127.0.0.1:{node.port}"],
                     ["stats", "--json", f"127.0.0.1:{node.port}", "127.0.0.1:1"]):
            result = _tasker(args, secret_env)
            collected.add_run(f"tasker {' '.join(args[:2])}", result)
            assert result.returncode == 0, result.stderr[-2000:]
        migrate = _tasker(["migrate"], secret_env)
        collected.add_run("tasker migrate", migrate)
        assert migrate.returncode == 0, migrate.stderr[-2000:]
        inspect = _run(["-m", "celery", "-A", "tasker", "inspect", "stats", "--timeout", "10",
                        "-d", node.hostname], secret_env)
        collected.add_run("celery inspect stats", inspect)
        assert inspect.returncode == 0 and '"tasker"' in inspect.stdout.replace("'", '"'), \
            inspect.stdout[-2000:]
        report = _run(["-m", "celery", "-A", "tasker", "report"], secret_env)
        collected.add_run("celery report", report)
        client.close()
    finally:
        _stop_group(beat)
    node.stop()
    collected.add("worker log", node.log())
    collected.add("beat log", beat_log.read_bytes())
    assert "DiagnosticFailure" in node.log() and "127.0.0.1:5432" in node.log()
    # The URLs were printed, redacted (by Celery's banner and by tasker's log formatter).
    collected.assert_clean("sample.completed", "Scheduler", "tasker_sample_up", "total_runs",
                           "redis://:**@127.0.0.1", "postgresql://root:***@127.0.0.1:5432",
                           min_chars=20_000)


@pytest.mark.slow
def test_demo_never_prints_the_password(secret_env, tmp_path):
    collected = Collected(tmp_path / "collected.txt")
    data_dir = tmp_path / "demo"
    port = free_port()
    env = {**secret_env, "TASKER_METRICS_PORT": str(port)}
    with (tmp_path / "demo.out").open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "tasker.cli.main", "demo", "--duration", "25", "--rate", "10",
             "--data-dir", str(data_dir)],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def busy() -> bool:
            try:
                return (http_get(f"{url}/metrics.json", timeout=5)[0] == 200
                        and json.loads(http_get(f"{url}/metrics.json")[2])["total_runs"] > 5)
            except OSError:
                return False
        wait_for(busy, timeout=40, interval=0.5, message="demo worker ran tasks")
        _scrape_all(collected, "demo worker", url)
        flower = re.search(r"Flower:\s+(http://127\.0\.0\.1:\d+)", (tmp_path / "demo.out")
                           .read_text(errors="replace"))
        assert flower, (tmp_path / "demo.out").read_text(errors="replace")

        def flower_workers() -> bytes | None:
            try:
                status, _, body = http_get(f"{flower.group(1)}/api/workers?refresh=1",
                                           timeout=15)
            except OSError:
                return None
            return body if status == 200 and b"tasker" in body else None
        collected.add("flower /api/workers", wait_for(flower_workers, timeout=30, interval=1,
                                                      message="Flower shows the worker"))
        for page in ("/", "/broker", "/workers"):
            try:
                collected.add(f"flower {page}", http_get(f"{flower.group(1)}{page}",
                                                         timeout=15)[2])
            except OSError:
                pass
        demo.wait(timeout=60)  # --duration ends it; it stops everything it started
        assert demo.returncode == 0, (tmp_path / "demo.out").read_text(errors="replace")
    finally:
        if demo.poll() is None:
            _stop_group(demo, timeout=30)
    collected.add("demo stdout", (tmp_path / "demo.out").read_bytes())
    collected.add_files("demo", data_dir / "logs")
    assert {"worker.log", "beat.log", "flower.log"} <= {p.name for p in
                                                        (data_dir / "logs").iterdir()}
    collected.assert_clean("worker.ready", "tasker_worker_info", "Scheduler", "runs=",
                           "redis://:*", min_chars=20_000)


@pytest.mark.slow
def test_unreachable_services_fail_without_printing_the_password(start_node, secret_env,
                                                                 tmp_path):
    collected = Collected(tmp_path / "collected.txt")
    dead_db = f"postgresql://root:{ODD_ENCODED}@127.0.0.1:1/nowhere"
    dead_broker = f"redis://user:{ODD_ENCODED}@127.0.0.1:1/0"
    env = {**secret_env, "TASKER_DATABASE_URL": dead_db}

    # A node whose database is down, and one whose broker is down (it keeps retrying).
    node = start_node(env=env)
    broken = start_node(env={**env, "TASKER_BROKER_URL": dead_broker}, wait=False)
    from celery import Celery

    client = Celery("secrets-client", broker=secret_env["TASKER_BROKER_URL"])
    client.send_task("diagnostics.hold_db", args=(0.1,), queue=node.queue)
    client.close()

    # Commands against a dead database and a dead broker, all at once: the ones that
    # need a pooled connection wait out the pool timeout (30 s) before they fail.
    commands = {
        "sample": (["sample", "--once"], {"TASKER_BROKER_URL": dead_broker}),
        "sample --json": (["sample", "--once", "--json"], {"TASKER_BROKER_URL": dead_broker}),
        "status": (["status", "01a22d40-2c01-7579-beef-bbe43ee0c3e2"], {}),
        "submit": (["submit", "linear.sequence", "--context", '{"n": 1}'], {}),
        "migrate": (["migrate"], {}),
    }
    running = {label: subprocess.Popen([sys.executable, "-m", "tasker.cli.main", *args],
                                       cwd=REPO, env={**env, **extra}, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for label, (args, extra) in commands.items()}
    try:
        results = {}
        for label, proc in running.items():
            out, err = proc.communicate(timeout=90)
            collected.add(f"tasker {label} stdout", out)
            collected.add(f"tasker {label} stderr", err)
            results[label] = (proc.returncode, out, err)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for label, (code, out, err) in results.items():
        if label.startswith("sample"):  # a sample with sources down is still a sample
            assert code == 0, (label, err[-2000:])
        else:
            assert code != 0 and err.strip(), (label, code, out[-1000:], err[-1000:])
    sample = json.loads(results["sample --json"][1])["sources"]
    assert not sample["broker"]["up"] and not sample["database"]["up"], sample

    wait_for(lambda: node.snapshot()["failed"] == 1, timeout=60, message="hold_db failed")
    _scrape_all(collected, "worker without db", node.url)
    wait_for(lambda: "Cannot connect" in broken.log(), timeout=30, interval=0.5,
             message="worker reports the unreachable broker")
    broken.stop()
    node.stop()
    collected.add("worker without db log", node.log())
    collected.add("worker without broker log", broken.log())
    assert "diagnostics.hold_db" in node.log()
    # The URLs were printed, redacted: the sweep looked at the right lines.
    collected.assert_clean("Connection refused", "redis://user:***@127.0.0.1:1/0",
                           "user:**@127.0.0.1:1", min_chars=5000)


# -- every shape a secret can take x every place a value can appear ---------------------

#: (id, variable, value, the secrets in it). Each value points at nothing that answers
#: (port 1, a missing socket), so every command fails fast and prints its error.
SHAPES = [
    ("failover", "TASKER_BROKER_URL",
     "redis://:FoPw-1111@127.0.0.1:1/0;redis://:FoPw-2222@127.0.0.1:2/0",
     ("FoPw-1111", "FoPw-2222")),
    ("amqp-failover", "TASKER_BROKER_URL",
     "amqp://u:AfPw-1717@127.0.0.1:1//;amqp://u:AfPw-1818@127.0.0.1:2//",
     ("AfPw-1717", "AfPw-1818")),
    ("sentinel", "TASKER_RESULT_BACKEND",
     "sentinel://:SnPw-3333@127.0.0.1:1/0;sentinel://:SnPw-3434@127.0.0.1:2/0",
     ("SnPw-3333", "SnPw-3434")),
    ("query-password", "TASKER_DATABASE_URL",
     "postgresql://u:QpPw-4444@127.0.0.1:1/db?password=QpPw-5555", ("QpPw-4444", "QpPw-5555")),
    ("query-password-only", "TASKER_DATABASE_URL",
     "postgresql://127.0.0.1:1/db?user=u&password=QoPw-1919", ("QoPw-1919",)),
    ("keyword-conninfo", "TASKER_DATABASE_URL",
     "host=127.0.0.1 port=1 user=u password=KwPw-6666 dbname=x", ("KwPw-6666",)),
    ("keyword-quoted", "TASKER_DATABASE_URL",
     "host=db password='Kw Pw-7777' dbname=x", ("Kw Pw-7777", "Pw-7777")),
    ("percent-encoded", "TASKER_BROKER_URL",
     "redis://:Pe%40Pw%3A88%2F88@127.0.0.1:1/0", ("Pe@Pw:88/88", "Pe%40Pw%3A88%2F88")),
    ("raw-at-sign", "TASKER_BROKER_URL",
     "rediss://default:Rs@Pw-1616@127.0.0.1:1/0", ("Rs@Pw-1616", "Pw-1616")),
    ("ipv6-broker", "TASKER_BROKER_URL", "redis://user:V6Pw-9999@[::1]:1/0", ("V6Pw-9999",)),
    ("ipv6-database", "TASKER_DATABASE_URL", "postgresql://u:V6Db-1010@[::1]:1/db",
     ("V6Db-1010",)),
    ("unix-socket-database", "TASKER_DATABASE_URL",
     "postgresql://u:UxPw-1212@/db?host=/nonexistent/tasker-socket-dir", ("UxPw-1212",)),
    ("unix-socket-backend", "TASKER_RESULT_BACKEND",
     "redis+socket:///nonexistent/redis.sock?password=UxRb-1313", ("UxRb-1313",)),
    ("token", "TASKER_METRICS_TOKEN", "TokSecret-1414", ("TokSecret-1414",)),
    ("amqp", "TASKER_BROKER_URL", "amqp://guest:AmPw-1515@127.0.0.1:1//", ("AmPw-1515",)),
]


def _leaks(text: str, secrets: tuple[str, ...]) -> list[str]:
    return [_around(text, s) for s in secrets if s in text]


def _log_lines(value: str) -> str:
    """What tasker's log formatters write for a record carrying ``value`` everywhere."""
    import logging

    from tasker.logs import JsonFormatter, TextFormatter

    try:
        raise RuntimeError(f"cannot connect to {value}")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("tasker.test", logging.ERROR, __file__, 1,
                               "connecting to %s failed", (value,), exc_info)
    record.url = value
    record.reason = f"error: {value}"
    return "\n".join(f.format(record) for f in (JsonFormatter(), TextFormatter()))


@pytest.mark.parametrize(("variable", "value", "secrets"),
                         [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_a_secret_in_any_shape_is_not_in_errors_repr_or_logs(variable: str, value: str,
                                                             secrets: tuple[str, ...]) -> None:
    from tasker.settings import SettingsError, load_settings

    places: dict[str, str] = {}
    # The start-up error line of another setting, and of this one if it is refused.
    with pytest.raises(SettingsError) as other:
        load_settings({variable: value, "TASKER_EMA_ALPHA": "2"})
    places["error line (other setting)"] = str(other.value)
    try:
        settings = load_settings({variable: value})
        places["repr(Settings)"] = repr(settings)
        places["str(Settings)"] = str(settings)
        places["redacted properties"] = f"{settings.broker_url_redacted} " \
                                        f"{settings.database_url_redacted}"
    except SettingsError as exc:
        places["error line (this setting)"] = str(exc)
    places["logs"] = _log_lines(value)
    leaks = {place: _leaks(text, secrets) for place, text in places.items()}
    assert not any(leaks.values()), leaks
    if "repr(Settings)" in places:  # a valid value: the other setting's error was reached
        assert "TASKER_EMA_ALPHA" in places["error line (other setting)"]


def _run_env(variable: str, value: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKER_")}
    env.update({"TASKER_BROKER_URL": "redis://127.0.0.1:1/0",
                "TASKER_DATABASE_URL": "postgresql://u@127.0.0.1:1/none",
                "TASKER_LOG_FORMAT": "json", variable: value, **extra})
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~1 min
@pytest.mark.parametrize(("variable", "value", "secrets"),
                         [s[1:] for s in SHAPES], ids=[s[0] for s in SHAPES])
def test_a_secret_in_any_shape_is_not_printed_by_the_worker_or_any_command(
        variable: str, value: str, secrets: tuple[str, ...]) -> None:
    outputs: dict[str, str] = {}
    # Start-up with one bad setting: the worker and a command stop with one line.
    bad = _run_env(variable, value, TASKER_EMA_ALPHA="2")
    for label, argv in {"celery worker": ["-m", "celery", "-A", "tasker", "worker"],
                        "tasker stats": ["-m", "tasker.cli.main", "stats", "127.0.0.1:1"]}.items():
        result = _run(argv, bad, timeout=60)
        assert result.returncode == 2, (label, result.stderr[-2000:])
        assert len(result.stderr.strip().splitlines()) == 1, (label, result.stderr)
        outputs[f"{label} (bad setting)"] = result.stdout + result.stderr
    # The commands with the value in use, against services that do not answer.
    env = _run_env(variable, value)
    commands = {"stats": ["stats", "--json", "127.0.0.1:1"],
                "sample": ["sample", "--once"], "sample --json": ["sample", "--once", "--json"]}
    if variable == "TASKER_BROKER_URL":
        # (Only here: with an unreachable result backend, load waits on it for minutes.)
        commands["load"] = ["load", "--count", "1", "--quiet"]
    if variable == "TASKER_DATABASE_URL":
        commands["status"] = ["status", "01a22d40-2c01-7579-beef-bbe43ee0c3e2"]
        commands["migrate"] = ["migrate"]
    for label, args in commands.items():
        result = _tasker(args, env, timeout=90)
        outputs[f"tasker {label}"] = result.stdout + result.stderr
        assert result.stdout.strip() or result.stderr.strip(), label
    leaks = {place: _leaks(text, secrets) for place, text in outputs.items()}
    assert not any(leaks.values()), leaks


@pytest.mark.slow
@pytest.mark.timeout(300)  # ~40 s
def test_a_node_with_failover_query_passwords_and_a_token_never_shows_them(
        start_node, private_redis, database_url, tmp_path) -> None:
    """The shapes a running node uses: /metrics, /metrics.json, inspect stats, logs, CLI."""
    import redis

    client = redis.Redis.from_url(private_redis.url)
    client.flushall()
    client.close()
    token = "TokSecret-2020"
    db_name = database_url.rsplit("/", 1)[1]
    env = {
        **os.environ,
        # kombu's failover form: the first host refuses, the second (with the password) works.
        "TASKER_BROKER_URL": f"redis://:{PASSWORD}@127.0.0.1:1/0;{private_redis.url}",
        "TASKER_RESULT_BACKEND": f"redis://127.0.0.1:{private_redis.port}/1?password={PASSWORD}",
        # The query password wins for libpq (trust auth accepts any).
        "TASKER_DATABASE_URL": f"postgresql://root:DbPw-2121@127.0.0.1:5432/{db_name}"
                               f"?password=DbPw-2222",
        "TASKER_METRICS_TOKEN": token, "TASKER_SAMPLE_INTERVAL": "1",
        "TASKER_LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1",
    }
    secrets = (PASSWORD, "DbPw-2121", "DbPw-2222", token)
    collected: dict[str, str] = {}
    node = start_node(queue=f"{SESSION}-shapes,celery", env=env)
    from celery import Celery

    sender = Celery("shapes-client", broker=private_redis.url)
    sender.send_task("diagnostics.hold_db", args=(0.1,), queue=f"{SESSION}-shapes")
    sender.send_task("tasker.sample_fleet", queue=f"{SESSION}-shapes")
    sender.close()
    auth = {"Authorization": f"Bearer {token}"}
    wait_for(lambda: json.loads(http_get(f"{node.url}/metrics.json", auth)[2])
             .get("total_runs", 0) >= 2, timeout=60, message="two tasks ran")
    for path in ("/metrics", "/metrics.json", "/healthz"):
        status, _, body = http_get(f"{node.url}{path}", auth)
        assert status == 200, (path, status)
        collected[path] = body.decode()
    assert "tasker_sample_up" in collected["/metrics"]
    inspect = _run(["-m", "celery", "-A", "tasker", "inspect", "stats", "--timeout", "10",
                    "-d", node.hostname], env)
    assert inspect.returncode == 0, inspect.stderr[-2000:]
    collected["inspect stats"] = inspect.stdout + inspect.stderr
    for args in (["stats", "--json", f"127.0.0.1:{node.port}"], ["sample", "--once", "--json"],
                 ["migrate"], ["status", "01a22d40-2c01-7579-beef-bbe43ee0c3e2"]):
        result = _tasker(args, env)
        collected[f"tasker {args[0]}"] = result.stdout + result.stderr
    assert '"up": true' in collected["tasker sample"].replace("\n", " ") or \
        '"up":true' in collected["tasker sample"], collected["tasker sample"][-2000:]
    node.stop()
    collected["worker log"] = node.log()
    leaks = {place: _leaks(text, secrets) for place, text in collected.items()}
    assert not any(leaks.values()), leaks
    assert sum(len(t) for t in collected.values()) > 5000
