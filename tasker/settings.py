"""Every tasker setting: parsed and validated here, once, at start-up.

Nothing else in tasker reads ``os.environ`` for configuration. A bad value
raises :class:`SettingsError` whose message is one line naming the variable and
what it accepts; the entry points turn it into that line on stderr and a
non-zero exit.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from tasker.metrics.directory import ForeignFilesError, refuse_foreign
from tasker.redact import MASK, redact_text, redact_url, register_secrets, secrets_in

__all__ = ["Settings", "SettingsError", "load_settings", "get_settings", "reset_settings",
           "unknown_variables", "KNOWN_VARIABLES"]

T = TypeVar("T")

#: URL schemes kombu can use as a broker that tasker knows how to sample.
BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "amqps", "pyamqp"})
DATABASE_SCHEMES = frozenset({"postgresql", "postgres"})
LOG_FORMATS = frozenset({"json", "text"})
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"})
#: Celery result backends whose URL is ``scheme://``; ``db+<sqlalchemy url>`` is also accepted.
RESULT_BACKEND_SCHEMES = frozenset({
    "redis", "rediss", "sentinel", "rpc", "cache", "mongodb", "cassandra", "couchbase",
    "couchdb", "elasticsearch", "elasticsearchs", "dynamodb", "s3", "gs", "file", "consul",
    "arangodb", "azureblockblob", "cosmosdbsql", "riak", "socket", "redis+socket"})
#: Schemes that name a unix socket path instead of a host (Celery's Redis backend).
_SOCKET_SCHEMES = frozenset({"socket", "redis+socket"})
#: The settings that hold secrets: registered for redaction before anything is validated.
SECRET_VARIABLES = ("TASKER_BROKER_URL", "TASKER_RESULT_BACKEND", "TASKER_DATABASE_URL",
                    "TASKER_METRICS_TOKEN")
#: Every variable tasker reads (also the candidates of the "did you mean" warning).
KNOWN_VARIABLES = frozenset({
    "TASKER_BROKER_URL", "TASKER_BROKER_MASTER_NAME", "TASKER_RESULT_BACKEND",
    "TASKER_DATABASE_URL", "TASKER_DB_POOL_MIN", "TASKER_DB_POOL_MAX", "TASKER_METRICS_PORT",
    "TASKER_METRICS_BIND",
    "TASKER_METRICS_TOKEN", "TASKER_RATE_WINDOW", "TASKER_EMA_ALPHA",
    "TASKER_SAMPLE_INTERVAL", "TASKER_SAMPLE_QUEUES", "TASKER_STEP_QUEUE",
    "TASKER_RECOVERY_INTERVAL", "TASKER_RECOVERY_DEADLINE", "TASKER_METRICS_INTERVAL",
    "TASKER_LOG_FORMAT", "TASKER_LOG_LEVEL", "TASKER_OTEL_ENABLED", "TASKER_OTEL_FILE",
    "TASKER_MAX_CONTEXT_BYTES", "TASKER_REUSE_BROKER_CLIENT",
    "TASKER_HISTOGRAM_BUCKETS", "TASKER_NATIVE_HISTOGRAMS", "TASKER_NATIVE_HISTOGRAM_SCHEMA",
})
#: ``TASKER_*`` names that are not settings but are used on purpose: the demo's
#: child marker, and Compose's host-side interpolation variables.
OTHER_VARIABLES = frozenset({"TASKER_DEMO_RUN", "TASKER_IMAGE", "TASKER_PUBLISH_ADDR"})
#: Prefixes of variables that belong to tasker's tests and benchmarks, never warned about.
EXEMPT_PREFIXES = ("TASKER_TEST_", "TASKER_BENCH_")


class SettingsError(ValueError):
    """A setting has a value tasker cannot use; the message is one line.

    The message is redacted here, once, so no entry point can print a secret
    it was handed (whatever variable the error is about).
    """

    def __init__(self, message: str) -> None:
        super().__init__(redact_text(" ".join(message.split())))


@dataclass(frozen=True, repr=False)
class Settings:
    """The validated configuration of one tasker process."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    #: kombu's transport option master_name, for a sentinel:// broker.
    broker_master_name: str | None = None
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
    #: Classic bucket bounds of the runtime and queue-wait histograms (None: the default).
    histogram_buckets: tuple[float, ...] | None = None
    native_histograms: bool = True
    native_schema: int = 5

    def __repr__(self) -> str:
        # Never the secrets: a Settings object ends up in tracebacks and debug logs.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "metrics_token" and value is not None:
                value = MASK
            elif f.name in ("broker_url", "result_backend", "database_url") and value:
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    __str__ = __repr__

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
    except SettingsError as exc:  # a converter that says precisely what is wrong
        raise SettingsError(
            f"{name}={redact_url(raw)!r} is invalid: {exc}; expected {accepted}") from None
    except (TypeError, ValueError):
        value = None
    if value is None or not check(value):
        # Every value is redacted, URL or not: a keyword conninfo has no "://".
        raise SettingsError(f"{name}={redact_url(raw)!r} is invalid: expected {accepted}")
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


_REDIS_SCHEMES = frozenset({"redis", "rediss", "sentinel"})
_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _host_name(raw: str) -> str:
    """An IP address (v4 or v6, brackets allowed) or a syntactically valid host name."""
    candidate = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if candidate.replace(".", "").isdigit():
        raise ValueError(raw)  # 999.1.1.1 is neither an address nor a name
    labels = candidate.rstrip(".").split(".")
    if len(candidate) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise ValueError(raw)
    return candidate


#: ``ssl_cert_reqs`` values Celery's Redis backend and kombu's transport accept.
_SSL_CERT_REQS = frozenset({"required", "optional", "none", "CERT_REQUIRED", "CERT_OPTIONAL",
                            "CERT_NONE"})


def _check_url_part(part: str, schemes: frozenset[str], *, redis_db: bool,
                    need_cert_reqs: bool = False) -> None:
    """Refuse what kombu, redis-py or Celery would refuse later, with the reason."""
    try:
        parts = urlsplit(part)
    except ValueError:
        raise SettingsError("expected a URL (unbalanced [ in the host?)") from None
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        raise SettingsError(f"scheme {scheme or '(none)'!r} is not one of "
                            f"{', '.join(sorted(schemes))}")
    if scheme in _SOCKET_SCHEMES:
        if not parts.path:
            raise SettingsError("expected a socket path (socket:///path/to/redis.sock)")
        return
    if not parts.hostname:
        raise SettingsError("expected a host")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError("the port must be a number 1..65535") from None
    if port == 0:
        raise SettingsError("the port must be a number 1..65535")
    try:
        _host_name(parts.hostname)
    except ValueError:
        raise SettingsError(f"{parts.hostname!r} is not a host name or IP address") from None
    if redis_db and scheme in _REDIS_SCHEMES:
        db = parts.path.strip("/")
        # kombu does int(virtual_host) when it first connects: ValueError and a
        # traceback, long after start-up, unless it is refused here.
        if db and not (db.isdigit() and int(db) < 1_000_000):
            raise SettingsError(f"the Redis database number {unquote(db)!r} is not an "
                                "integer >= 0")
        query = dict(parse_qsl(parts.query))
        for key, value in query.items():
            if key in ("virtual_host", "db") and not value.isdigit():
                raise SettingsError(f"the Redis database number {value!r} is not an "
                                    "integer >= 0")
        cert_reqs = query.get("ssl_cert_reqs")
        if cert_reqs is not None and cert_reqs not in _SSL_CERT_REQS:
            raise SettingsError(f"ssl_cert_reqs={cert_reqs!r} is not one of "
                                "required, optional, none")
        if need_cert_reqs and scheme == "rediss" and cert_reqs is None:
            # Celery's Redis result backend refuses a rediss:// URL without it
            # (ValueError when the first result is stored).
            raise SettingsError("a rediss:// result backend needs ?ssl_cert_reqs=required "
                                "(or optional, none)")


def _failover_url(schemes: frozenset[str], *, redis_db: bool = True,
                  need_cert_reqs: bool = False) -> Callable[[str], str]:
    """A URL, or kombu's ``;``-separated failover list of them, each part checked."""
    def convert(raw: str) -> str:
        for part in raw.split(";"):
            _check_url_part(part.strip(), schemes, redis_db=redis_db,
                            need_cert_reqs=need_cert_reqs)
        return raw

    return convert


def _broker_url(raw: str) -> str:
    # sentinel:// (one URL per sentinel, ;-separated) also needs
    # TASKER_BROKER_MASTER_NAME: checked in load_settings, where both are known.
    return _failover_url(BROKER_SCHEMES | {"sentinel"})(raw)


def _result_backend(raw: str) -> str:
    if raw.startswith("db+"):  # SQLAlchemy URL: Celery validates it when it connects
        return raw
    return _failover_url(RESULT_BACKEND_SCHEMES, need_cert_reqs=True)(raw)


def _buckets(raw: str) -> tuple[float, ...]:
    bounds = tuple(float(part) for part in raw.split(",") if part.strip())
    if not bounds:
        raise SettingsError("no bucket bound given")
    if any(not (math.isfinite(b) and b > 0) for b in bounds):
        raise SettingsError("every bound must be a finite number of seconds above 0")
    if list(bounds) != sorted(set(bounds)):
        raise SettingsError("bounds must be given in increasing order, each once")
    return bounds


def _multiproc_dir(raw: str) -> str:
    # Checked at start-up, where a refusal is one line and exit 2; the node
    # checks again before it empties the directory (tasker/metrics/directory.py).
    if os.path.exists(raw) and not os.path.isdir(raw):
        raise SettingsError("it exists and is not a directory")
    try:
        refuse_foreign(raw)
    except ForeignFilesError as exc:
        raise SettingsError(str(exc).split(" ", 1)[1]) from None
    except OSError as exc:
        raise SettingsError(f"cannot read it ({exc.strerror})") from None
    return raw


def _database_url(raw: str) -> str:
    if "://" not in raw:
        raise SettingsError("keyword conninfo (host=... dbname=...) is not accepted")
    parts = urlsplit(raw)
    if parts.scheme not in DATABASE_SCHEMES:
        raise SettingsError(f"scheme {parts.scheme!r} is not postgresql or postgres")
    try:
        params = conninfo_to_dict(raw)
    except psycopg.Error as exc:
        # libpq's own reason (an unknown ?parameter, bad percent-encoding).
        raise SettingsError(str(exc).strip().splitlines()[0]) from None
    if not (params.get("host") or params.get("hostaddr")):
        raise SettingsError("expected a host (or ?host=/socket/directory)")
    for port in str(params.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise SettingsError("the port must be a number 1..65535")
    return raw


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate settings from ``env`` (default: the process environment).

    Raises:
        SettingsError: one line naming the variable and the accepted values.
    """
    env = os.environ if env is None else env
    # Known before anything is validated, so no message below can carry them.
    for name in SECRET_VARIABLES:
        raw = env.get(name)
        register_secrets(raw if name == "TASKER_METRICS_TOKEN" else None, *secrets_in(raw))
    schemes = ", ".join(sorted(BROKER_SCHEMES))
    db_pool_min = _parse(env, "TASKER_DB_POOL_MIN", 1, int, "an integer >= 0", lambda v: v >= 0)
    db_pool_max = _parse(env, "TASKER_DB_POOL_MAX", 4, int, "an integer >= 1", lambda v: v >= 1)
    if db_pool_max < db_pool_min:
        raise SettingsError(
            f"TASKER_DB_POOL_MAX={db_pool_max} is invalid: expected an integer >= "
            f"TASKER_DB_POOL_MIN ({db_pool_min})"
        )
    broker_url = _parse(env, "TASKER_BROKER_URL", Settings.broker_url, _broker_url,
                        f"a broker URL with scheme {schemes} (or sentinel) and a host")
    broker_master_name = _parse(env, "TASKER_BROKER_MASTER_NAME", None, str,
                                "the name of the Redis master the sentinels watch")
    if broker_url.lower().startswith("sentinel://") and not broker_master_name:
        raise SettingsError(f"TASKER_BROKER_URL={redact_url(broker_url)!r} is invalid without "
                            "TASKER_BROKER_MASTER_NAME: a sentinel:// broker needs the name of "
                            "the master the sentinels watch (kombu's master_name)")
    return Settings(
        broker_url=broker_url,
        broker_master_name=broker_master_name,
        result_backend=_parse(env, "TASKER_RESULT_BACKEND", None, _result_backend,
                              "a Celery result backend URL"),
        database_url=_parse(env, "TASKER_DATABASE_URL", Settings.database_url,
                            _database_url, "a postgresql:// URL with a host"),
        db_pool_min=db_pool_min,
        db_pool_max=db_pool_max,
        metrics_port=_parse(env, "TASKER_METRICS_PORT", 9800, int,
                            "a port number 0..65535 (0 = any free port)",
                            lambda v: 0 <= v <= 65535),
        # Checked here, not when the server binds: a node must not run on
        # without /metrics and /healthz because of a typo.
        metrics_bind=_parse(env, "TASKER_METRICS_BIND", "127.0.0.1", _host_name,
                            "an IP address (0.0.0.0, ::, 127.0.0.1) or a host name, "
                            "without a port"),
        metrics_token=_parse(env, "TASKER_METRICS_TOKEN", None, str, "a bearer token"),
        multiproc_dir=_parse(env, "PROMETHEUS_MULTIPROC_DIR", None, _multiproc_dir,
                             "a directory that is new, empty or tasker's own"),
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
        histogram_buckets=_parse(env, "TASKER_HISTOGRAM_BUCKETS", None, _buckets,
                                 "comma-separated seconds in increasing order, e.g. "
                                 "0.01,0.05,0.1,0.5,1"),
        native_histograms=_parse(env, "TASKER_NATIVE_HISTOGRAMS", True, _bool,
                                 "true or false"),
        native_schema=_parse(env, "TASKER_NATIVE_HISTOGRAM_SCHEMA", 5, int,
                             "an integer from 0 to 8 (2**schema buckets per power of two)",
                             lambda v: 0 <= v <= 8),
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


def unknown_variables(env: Mapping[str, str] | None = None) -> list[str]:
    """One warning line per ``TASKER_*`` variable tasker does not know, with the closest name.

    Variables starting with ``TASKER_TEST_`` or ``TASKER_BENCH_`` (tests and
    benchmarks) are never reported.
    """
    env = os.environ if env is None else env
    lines = []
    for name in sorted(env):
        if (not name.startswith("TASKER_") or name in KNOWN_VARIABLES
                or name in OTHER_VARIABLES or name.startswith(EXEMPT_PREFIXES)):
            continue
        close = difflib.get_close_matches(name, sorted(KNOWN_VARIABLES), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        lines.append(f"{name} is not a tasker setting and is ignored{hint}")
    return lines


_current: Settings | None = None


def get_settings() -> Settings:
    """The settings of this process, loaded on first use and then cached.

    The first load also warns on stderr about unknown ``TASKER_*`` variables
    (a typo such as ``TASKER_METRICS_PROT`` would otherwise be ignored silently).
    """
    global _current  # one parse per process: every module asks, at any time, for the same values
    if _current is None:
        _current = load_settings()
        for line in unknown_variables():
            print(f"tasker: warning: {line}", file=sys.stderr)
    return _current


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI's child processes)."""
    global _current  # the cache get_settings() fills
    _current = None
