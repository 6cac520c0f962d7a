"""Settings validation (SPEC §2) and password redaction."""

from __future__ import annotations

import pytest

from tasker.redact import redact_text, redact_url
from tasker.settings import Settings, SettingsError, load_settings


def test_defaults_match_the_spec() -> None:
    s = load_settings({})
    assert s.broker_url == "redis://127.0.0.1:6379/0"
    assert s.result_backend is None
    assert s.database_url == "postgresql://127.0.0.1:5432/tasker"
    assert (s.db_pool_min, s.db_pool_max) == (1, 4)
    assert s.metrics_port == 9800
    assert s.metrics_bind == "127.0.0.1"
    assert s.metrics_token is None
    assert s.multiproc_dir is None
    assert s.rate_window == 60
    assert s.ema_alpha == 0.1
    assert s.sample_interval == 15
    assert s.metrics_interval == 60
    assert s.log_format == "json"
    assert s.reuse_broker_client is True
    assert s == Settings()
    assert s.broker_is_redis


def test_blank_values_mean_the_default() -> None:
    assert load_settings({"TASKER_METRICS_PORT": "", "TASKER_EMA_ALPHA": "  "}) == Settings()


def test_good_values_are_parsed() -> None:
    s = load_settings({
        # A password unlike the user name: every spelling of a configured
        # password is hidden wherever it appears, a user name equal to it too.
        "TASKER_BROKER_URL": "amqp://guest:guest-pw@rabbit:5672//",
        "TASKER_DATABASE_URL": "postgres://u:p@db/tasker",
        "TASKER_DB_POOL_MIN": "2", "TASKER_DB_POOL_MAX": "2",
        "TASKER_METRICS_PORT": "0", "TASKER_METRICS_BIND": "0.0.0.0",
        "TASKER_EMA_ALPHA": "1", "TASKER_RATE_WINDOW": "5",
        "TASKER_METRICS_INTERVAL": "0", "TASKER_LOG_FORMAT": "TEXT",
        "PROMETHEUS_MULTIPROC_DIR": "/tmp/x", "TASKER_REUSE_BROKER_CLIENT": "false",
    })
    assert s.broker_url == "amqp://guest:guest-pw@rabbit:5672//"
    assert not s.broker_is_redis
    assert (s.db_pool_min, s.db_pool_max) == (2, 2)
    assert s.metrics_port == 0 and s.metrics_bind == "0.0.0.0"
    assert s.ema_alpha == 1.0 and s.rate_window == 5.0
    assert s.metrics_interval == 0 and s.log_format == "text"
    assert s.multiproc_dir == "/tmp/x"
    assert s.reuse_broker_client is False
    assert s.broker_url_redacted == "amqp://guest:***@rabbit:5672//"
    assert s.database_url_redacted == "postgres://u:***@db/tasker"


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("TASKER_METRICS_PORT", "abc", "0..65535"),
    ("TASKER_METRICS_PORT", "70000", "0..65535"),
    ("TASKER_METRICS_PORT", "-1", "0..65535"),
    ("TASKER_EMA_ALPHA", "0", "0 < alpha <= 1"),
    ("TASKER_EMA_ALPHA", "2", "0 < alpha <= 1"),
    ("TASKER_EMA_ALPHA", "nan", "0 < alpha <= 1"),
    ("TASKER_RATE_WINDOW", "0", "between 1 and 3600"),
    ("TASKER_LOG_FORMAT", "xml", "json or text"),
    ("TASKER_BROKER_URL", "ftp://x", "redis"),
    ("TASKER_BROKER_URL", "redis://host:notaport/0", "redis"),
    ("TASKER_BROKER_URL", "redis://[::1/0", "redis"),
    ("TASKER_BROKER_URL", "not a url", "redis"),
    ("TASKER_DATABASE_URL", "mysql://db/x", "postgresql://"),
    ("TASKER_SAMPLE_INTERVAL", "0", ">= 1"),
    ("TASKER_METRICS_INTERVAL", "-5", ">= 0"),
    ("TASKER_DB_POOL_MIN", "one", ">= 0"),
    ("TASKER_REUSE_BROKER_CLIENT", "sometimes", "true or false"),
])
def test_a_bad_value_is_one_line_naming_the_variable_and_the_range(
        name: str, value: str, accepted: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({name: value})
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith(f"{name}=")
    assert accepted in message
    assert isinstance(excinfo.value, ValueError)


def test_pool_max_below_min_names_both_variables() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"TASKER_DB_POOL_MIN": "5", "TASKER_DB_POOL_MAX": "3"})
    message = str(excinfo.value)
    assert "\n" not in message
    assert message.startswith("TASKER_DB_POOL_MAX=3")
    assert "TASKER_DB_POOL_MIN (5)" in message


@pytest.mark.parametrize("name", ["TASKER_BROKER_URL", "TASKER_DATABASE_URL"])
def test_a_bad_url_with_a_password_is_reported_without_it(name: str) -> None:
    scheme = "redis" if name == "TASKER_BROKER_URL" else "postgresql"
    with pytest.raises(SettingsError) as excinfo:
        load_settings({name: f"{scheme}://user:s3cret@host:bad/0"})
    message = str(excinfo.value)
    assert "s3cret" not in message
    assert name in message and "user:***@host" in message
    assert "\n" not in message


def test_a_bad_url_that_cannot_be_split_hides_its_password() -> None:
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"TASKER_BROKER_URL": "redis://user:s3cret@[::1/0"})
    assert "s3cret" not in str(excinfo.value)


# -- redaction ------------------------------------------------------------


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("rediss://default:s3cret@cache.example.com/1", "rediss://default:***@cache.example.com/1"),
    ("amqp://guest:s3cret@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
    ("postgresql://app:s3cret@db:5432/tasker?sslmode=require",
     "postgresql://app:***@db:5432/tasker?sslmode=require"),
    ("postgresql://app:s3cret@[::1]:5432/tasker", "postgresql://app:***@[::1]:5432/tasker"),
    ("redis://user:p@ss@host/0", "redis://user:***@host/0"),  # unescaped @ in the password
])
def test_redact_url_hides_the_password(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "amqp://guest@rabbit//",
    "postgresql://db/tasker",
])
def test_redact_url_leaves_urls_without_a_password_alone(url: str) -> None:
    assert redact_url(url) == url


def test_redact_url_on_an_unparsable_url_still_hides_the_password() -> None:
    redacted = redact_url("redis://user:s3cret@[::1/0")
    assert "s3cret" not in redacted and "user:***@" in redacted


def test_redact_text_hides_every_url_password_in_free_text() -> None:
    text = ("Error 111 connecting to redis://user:s3cret@host:6379/0. "
            "Fallback amqp://guest:hunter2@rabbit:5672// failed too")
    redacted = redact_text(text)
    assert "s3cret" not in redacted and "hunter2" not in redacted
    assert redacted == ("Error 111 connecting to redis://user:***@host:6379/0. "
                        "Fallback amqp://guest:***@rabbit:5672// failed too")


@pytest.mark.parametrize(("text", "expected"), [
    ("host=db port=5432 dbname=tasker user=app password=s3cret",
     "host=db port=5432 dbname=tasker user=app password=***"),
    ("host=db password='s3 cret' user=app", "host=db password=*** user=app"),
    ("PASSWORD = s3cret host=db", "PASSWORD = *** host=db"),
])
def test_redact_text_hides_libpq_keyword_passwords(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_text_hides_a_password_containing_at_signs() -> None:
    redacted = redact_text("connecting to redis://user:p@ss@host:6379/0 failed")
    assert "ss@" not in redacted and "p@ss" not in redacted
    assert redacted == "connecting to redis://user:***@host:6379/0 failed"


def test_redact_text_leaves_text_without_passwords_alone() -> None:
    text = "task diagnostics.noop succeeded in 0.001s; see http://flower:5555/task/x"
    assert redact_text(text) == text
