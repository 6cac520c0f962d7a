"""Test support: real worker nodes as subprocesses, scrapes, waits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
#: Every queue and node name of this test session starts with this.
SESSION = f"tasker-test-{os.getpid()}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


def http_get(url: str, headers: dict[str, str] | None = None,
             method: str = "GET", timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Exposition text -> {(sample name, labels): value}; fails on invalid exposition."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample over every label set containing ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@dataclass
class WorkerNode:
    """A real ``celery -A tasker worker`` subprocess."""

    name: str
    queue: str
    port: int
    log_path: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    token: str | None = None
    extra_args: list[str] = field(default_factory=list)

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, concurrency: int = 2, wait: bool = True) -> WorkerNode:
        argv = [sys.executable, "-m", "celery", "-A", "tasker", "worker", "--pool", "prefork",
                "-c", str(concurrency), "-Q", self.queue, "-n", f"{self.name}@%h",
                "--loglevel", "INFO", "--without-mingle", "--without-gossip",
                *self.extra_args]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes it
        self.proc = subprocess.Popen(argv, env=self.env, cwd=REPO, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            log = self.log()
            return '"worker.ready"' in log or "worker.ready" in log
        wait_for(ready, timeout, 0.2, f"worker {self.name} ready")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass
        return events

    def directory(self) -> Path:
        for event in self.log_events():
            if event.get("event") == "metrics.serving":
                return Path(event["directory"])
        raise AssertionError("worker never logged metrics.serving")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def scrape(self) -> Samples:
        status, headers, body = http_get(f"{self.url}/metrics", self.auth())
        assert status == 200, (status, body[:500])
        assert headers["Content-Type"].startswith("text/plain"), headers
        return parse_metrics(body.decode())

    def snapshot(self) -> dict[str, Any]:
        status, _, body = http_get(f"{self.url}/metrics.json", self.auth())
        assert status == 200, (status, body[:500])
        return json.loads(body)

    def child_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None


def exited(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def busy_child(node) -> int:
    """The pid of the pool process whose tasks_active gauge is 1."""
    from prometheus_client.mmap_dict import MmapedDict

    for path in node.directory().glob("gauge_livesum_*.db"):
        owner = path.name[len("gauge_livesum_"):-3]
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if "tasker_worker_tasks_active" in key and value == 1:
                return int(owner.split("-")[0])
    raise AssertionError("no busy pool process found")
