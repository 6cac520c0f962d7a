"""Settings at the edges: URL parts refused at start-up, the bind address, unknown variables."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO

from tasker import settings
from tasker.settings import SettingsError, load_settings


@pytest.mark.parametrize(("name", "value", "reason"), [
    # Each of these passed validation and died later in kombu/redis-py/psycopg.
    ("TASKER_BROKER_URL", "redis://host:6379/abc", "database number"),
    ("TASKER_BROKER_URL", "redis://host:6379/-1", "database number"),
    ("TASKER_BROKER_URL", "redis://host:0/0", "port"),
    ("TASKER_BROKER_URL", "redis://host:6379/0;redis://host2:x/0", "port"),
    ("TASKER_BROKER_URL", "redis://host:6379/0;ftp://h/0", "scheme"),
    ("TASKER_BROKER_URL", "sentinel://h:26379/0", "master_name"),
    ("TASKER_BROKER_URL", "redis://ho st:6379/0", "host"),
    ("TASKER_BROKER_URL", "redis://:6379/0", "host"),
    ("TASKER_RESULT_BACKEND", "nosuch://h/0", "scheme"),
    ("TASKER_RESULT_BACKEND", "redis://h:6379/one", "database number"),
    ("TASKER_RESULT_BACKEND", "rediss://h:6380/0", "ssl_cert_reqs"),
    ("TASKER_BROKER_URL", "rediss://h:6380/0?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
    ("TASKER_DATABASE_URL", "postgresql://h/db?nosuchparam=1", "nosuchparam"),
    ("TASKER_DATABASE_URL", "postgresql://h:99999/db", "port"),
    ("TASKER_DATABASE_URL", "postgresql:///db", "host"),
])
def test_url_parts_a_library_would_reject_later_are_refused_at_start_up(
        name: str, value: str, reason: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({name: value})
    message = str(excinfo.value)
    assert message.startswith(f"{name}=") and "\n" not in message
    assert reason in message


@pytest.mark.parametrize(("name", "value"), [
    ("TASKER_BROKER_URL", "redis://:pw1@h1:6379/0;redis://:pw2@h2:6379/0"),  # kombu failover
    ("TASKER_BROKER_URL", "rediss://default:pw@cache.example.com:6380/2"),
    ("TASKER_BROKER_URL", "amqp://u:pw@[::1]:5672//"),
    ("TASKER_RESULT_BACKEND", "sentinel://:pw@h1:26379/0;sentinel://:pw@h2:26379/0"),
    ("TASKER_RESULT_BACKEND", "db+postgresql://u:pw@h/db"),
    ("TASKER_RESULT_BACKEND", "rediss://:pw@h:6380/0?ssl_cert_reqs=required"),
    ("TASKER_DATABASE_URL", "postgresql://u@/db?host=/var/run/postgresql"),
    ("TASKER_DATABASE_URL", "postgresql://u:p1@h/db?password=p2&sslmode=require"),
])
def test_url_shapes_kombu_and_libpq_accept_are_accepted(name: str, value: str) -> None:
    load_settings({name: value})


@pytest.mark.parametrize("value", ["0.0.0.0:9800", "999.1.1.1", "not a host", "bad/host", "::1]",
                                   "http://0.0.0.0", "-bad.example"])
def test_a_bad_metrics_bind_is_refused(value: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"TASKER_METRICS_BIND": value})
    assert str(excinfo.value).startswith("TASKER_METRICS_BIND=")


@pytest.mark.parametrize("value", ["0.0.0.0", "::", "127.0.0.1", "[::1]", "localhost",
                                   "worker-1.internal.example.com"])
def test_good_metrics_binds_are_accepted(value: str) -> None:
    load_settings({"TASKER_METRICS_BIND": value})


def test_a_bad_metrics_bind_stops_the_worker_with_one_line_and_exit_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "TASKER_METRICS_BIND": "0.0.0.0:9800",
           "TASKER_BROKER_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "tasker", "worker"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TASKER_METRICS_BIND" in lines[0], result.stderr


def test_a_bad_redis_db_number_stops_the_cli_with_one_line_and_exit_2() -> None:
    env = {"PATH": "/usr/bin:/bin", "TASKER_BROKER_URL": "redis://127.0.0.1:6379/abc"}
    result = subprocess.run([sys.executable, "-m", "tasker.cli.main", "sample", "--once"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TASKER_BROKER_URL" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


# -- unknown TASKER_* variables -------------------------------------------


def test_an_unknown_variable_is_reported_with_the_closest_known_name() -> None:
    lines = settings.unknown_variables({"TASKER_METRICS_PROT": "9811", "TASKER_BROKER_URL": "x",
                               "TASKER_EMA_ALPA": "0.2", "TASKER_ZZZZZZZZZZ": "1"})
    assert lines == [
        "TASKER_EMA_ALPA is not a tasker setting and is ignored; did you mean TASKER_EMA_ALPHA?",
        "TASKER_METRICS_PROT is not a tasker setting and is ignored; "
        "did you mean TASKER_METRICS_PORT?",
        "TASKER_ZZZZZZZZZZ is not a tasker setting and is ignored",
    ]


def test_test_and_bench_variables_and_other_prefixes_are_not_reported() -> None:
    assert settings.unknown_variables({"TASKER_TEST_REDIS_DB": "14", "TASKER_BENCH_X": "1",
                              "TASKER_DEMO_RUN": "1", "CELERY_X": "1", "TASKERX": "1"}) == []


def test_the_worker_warns_about_a_typo_at_start_up() -> None:
    # `celery report` loads the configuration like a worker does, then exits.
    env = {"PATH": "/usr/bin:/bin", "TASKER_METRICS_PROT": "9811"}
    result = subprocess.run([sys.executable, "-m", "celery", "-A", "tasker", "report"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert "TASKER_METRICS_PROT" in result.stderr and "TASKER_METRICS_PORT" in result.stderr, \
        result.stderr[-2000:]
    assert result.stderr.count("TASKER_METRICS_PROT") == 1


def test_a_sentinel_broker_with_its_master_name_is_accepted() -> None:
    url = "sentinel://:pw@127.0.0.1:26379/0;sentinel://127.0.0.1:26380/0"
    settings = load_settings({"TASKER_BROKER_URL": url, "TASKER_BROKER_MASTER_NAME": "mymaster"})
    assert settings.broker_url == url and settings.broker_master_name == "mymaster"
    assert "pw" not in repr(settings)
