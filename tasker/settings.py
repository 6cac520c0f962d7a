"""Every tasker setting: parsed and validated here, once, at start-up.

Nothing else in tasker reads ``os.environ`` for configuration. A bad value
raises :class:`SettingsError` whose message is one line naming the variable and
what it accepts; the entry points turn it into that line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from tasker.redact import redact_url

__all__ = ["Settings", "SettingsError", "load_settings", "get_settings", "reset_settings"]

T = TypeVar("T")

#: URL schemes kombu can use as a broker that tasker knows how to sample.
BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp"})
DATABASE_SCHEMES = frozenset({"postgresql", "postgres"})
LOG_FORMATS = frozenset({"json", "text"})
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})


class SettingsError(ValueError):
    """A setting has a value tasker cannot use; the message is one line."""


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one tasker process."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str | None = None
    database_url: str = "postgresql://127.0.0.1:5432/tasker"
    db_pool_min: int = 1
    db_pool_max: int = 4
    metrics_port: int = 9800
    metrics_bind: str = "127.0.0.1"
    metrics_token: str | None = None
    multiproc_dir: str | None = None
    rate_window: float = 60.0
    ema_alpha: float = 0.1
    sample_interval: float = 15.0
    sample_queues: tuple[str, ...] = ()
    step_queue: str = "celery"
    recovery_interval: float = 10.0
    recovery_deadline: float = 30.0
    metrics_interval: float = 60.0
    log_format: str = "json"
    log_level: str = "INFO"
    otel_enabled: bool = False
    otel_file: str | None = None
    otel_protocol: str = "http/protobuf"
    max_context_bytes: int = 65536
    reuse_broker_client: bool = True

    @property
    def broker_url_redacted(self) -> str:
        return redact_url(self.broker_url)

    @property
    def database_url_redacted(self) -> str:
        return redact_url(self.database_url)

    @property
    def broker_is_redis(self) -> bool:
        return urlsplit(self.broker_url).scheme in {"redis", "rediss"}


def _parse(env: Mapping[str, str], name: str, default: T, convert: Callable[[str], T],
           accepted: str, check: Callable[[T], bool] = lambda _v: True) -> T:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = convert(raw.strip())
    except (TypeError, ValueError):
        value = None
    if value is None or not check(value):
        shown = redact_url(raw) if "://" in raw else raw
        raise SettingsError(f"{name}={shown!r} is invalid: expected {accepted}")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def _queue_list(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if any(" " in n for n in names):
        raise ValueError(raw)
    return names


def _url(schemes: frozenset[str]) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(raw)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
        return raw

    return convert


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate settings from ``env`` (default: the process environment).

    Raises:
        SettingsError: one line naming the variable and the accepted values.
    """
    env = os.environ if env is None else env
    schemes = ", ".join(sorted(BROKER_SCHEMES))
    db_pool_min = _parse(env, "TASKER_DB_POOL_MIN", 1, int, "an integer >= 0", lambda v: v >= 0)
    db_pool_max = _parse(env, "TASKER_DB_POOL_MAX", 4, int, "an integer >= 1", lambda v: v >= 1)
    if db_pool_max < db_pool_min:
        raise SettingsError(
            f"TASKER_DB_POOL_MAX={db_pool_max} is invalid: expected an integer >= "
            f"TASKER_DB_POOL_MIN ({db_pool_min})"
        )
    return Settings(
        broker_url=_parse(env, "TASKER_BROKER_URL", Settings.broker_url, _url(BROKER_SCHEMES),
                          f"a broker URL with scheme {schemes} and a host"),
        result_backend=_parse(env, "TASKER_RESULT_BACKEND", None, str,
                              "a Celery result backend URL"),
        database_url=_parse(env, "TASKER_DATABASE_URL", Settings.database_url,
                            _url(DATABASE_SCHEMES), "a postgresql:// URL with a host"),
        db_pool_min=db_pool_min,
        db_pool_max=db_pool_max,
        metrics_port=_parse(env, "TASKER_METRICS_PORT", 9800, int,
                            "a port number 0..65535 (0 = any free port)",
                            lambda v: 0 <= v <= 65535),
        metrics_bind=_parse(env, "TASKER_METRICS_BIND", "127.0.0.1", str,
                            "an IP address or host name"),
        metrics_token=_parse(env, "TASKER_METRICS_TOKEN", None, str, "a bearer token"),
        multiproc_dir=_parse(env, "PROMETHEUS_MULTIPROC_DIR", None, str, "a directory path"),
        rate_window=_parse(env, "TASKER_RATE_WINDOW", 60.0, float,
                           "seconds, a number between 1 and 3600", lambda v: 1 <= v <= 3600),
        ema_alpha=_parse(env, "TASKER_EMA_ALPHA", 0.1, float,
                         "a number with 0 < alpha <= 1", lambda v: 0 < v <= 1),
        sample_interval=_parse(env, "TASKER_SAMPLE_INTERVAL", 15.0, float,
                               "seconds, a number >= 1", lambda v: v >= 1),
        sample_queues=_parse(env, "TASKER_SAMPLE_QUEUES", (), _queue_list,
                             "comma-separated queue names"),
        step_queue=_parse(env, "TASKER_STEP_QUEUE", "celery", str, "a queue name",
                          lambda v: " " not in v),
        recovery_interval=_parse(env, "TASKER_RECOVERY_INTERVAL", 10.0, float,
                                 "seconds, a number >= 0.5", lambda v: v >= 0.5),
        recovery_deadline=_parse(env, "TASKER_RECOVERY_DEADLINE", 30.0, float,
                                 "seconds, a number >= 1", lambda v: v >= 1),
        metrics_interval=_parse(env, "TASKER_METRICS_INTERVAL", 60.0, float,
                                "seconds, a number >= 0 (0 = off)", lambda v: v >= 0),
        log_format=_parse(env, "TASKER_LOG_FORMAT", "json", str.lower,
                          "json or text", lambda v: v in LOG_FORMATS),
        log_level=_parse(env, "TASKER_LOG_LEVEL", "INFO", str.upper,
                         "DEBUG, INFO, WARNING, ERROR or CRITICAL", lambda v: v in LOG_LEVELS),
        otel_enabled=_parse(env, "TASKER_OTEL_ENABLED", False, _bool, "true or false"),
        otel_file=_parse(env, "TASKER_OTEL_FILE", None, str, "a file path"),
        # The standard variable; the rest of OTEL_* is read by the SDK itself.
        otel_protocol=_parse(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                             _parse(env, "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf", str,
                                    "grpc or http/protobuf",
                                    lambda v: v in ("grpc", "http/protobuf")),
                             str, "grpc or http/protobuf",
                             lambda v: v in ("grpc", "http/protobuf")),
        max_context_bytes=_parse(env, "TASKER_MAX_CONTEXT_BYTES", 65536, int,
                                 "an integer >= 2", lambda v: v >= 2),
        reuse_broker_client=_parse(env, "TASKER_REUSE_BROKER_CLIENT", True, _bool,
                                   "true or false"),
    )


_current: Settings | None = None


def get_settings() -> Settings:
    """The settings of this process, loaded on first use and then cached."""
    global _current
    if _current is None:
        _current = load_settings()
    return _current


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI's child processes)."""
    global _current
    _current = None
