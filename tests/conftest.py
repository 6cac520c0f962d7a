"""Session fixtures: a private Redis db and PostgreSQL database, worker factories.

The environment is set before tasker is imported anywhere, so the test
process publishes to the same broker as the workers it starts.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import SESSION, WorkerNode, free_port

#: Redis db number the tests own (keys are also prefixed with SESSION).
TEST_REDIS_DB = int(os.environ.get("TASKER_TEST_REDIS_DB", "11"))
REDIS_URL = f"redis://127.0.0.1:6379/{TEST_REDIS_DB}"
DB_NAME = f"tasker_test_{os.getpid()}"
DATABASE_URL = f"postgresql://127.0.0.1:5432/{DB_NAME}"

os.environ.update({
    "TASKER_BROKER_URL": REDIS_URL,
    "TASKER_DATABASE_URL": DATABASE_URL,
    "TASKER_LOG_FORMAT": "json",
})
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
os.environ.pop("TASKER_METRICS_TOKEN", None)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A fresh, migrated database for the session, dropped at the end."""
    import psycopg

    from tasker.migrate import migrate

    migrate(DATABASE_URL)
    yield DATABASE_URL
    with psycopg.connect("postgresql://127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield client
    # Remove only what this session created: its queues and their bindings.
    for key in client.scan_iter(match=f"*{SESSION}*"):
        client.delete(key)
    for key in client.scan_iter(match="_kombu.binding.*"):
        for member in client.smembers(key):
            if SESSION.encode() in member:
                client.srem(key, member)
    client.close()


@pytest.fixture
def queue_name() -> str:
    return f"{SESSION}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start_node(tmp_path: Path, database_url: str, redis_client: object
               ) -> Iterator[Callable[..., WorkerNode]]:
    """Factory: start real worker nodes; all are stopped at the end of the test."""
    nodes: list[WorkerNode] = []

    def start(queue: str | None = None, concurrency: int = 2, env: dict[str, str] | None = None,
              extra_args: list[str] | None = None, wait: bool = True,
              name: str | None = None) -> WorkerNode:
        name = name or f"n{len(nodes)}-{uuid.uuid4().hex[:6]}"
        port = free_port()
        node_env = {**os.environ, "TASKER_METRICS_PORT": str(port),
                    "TASKER_METRICS_INTERVAL": "0", **(env or {})}
        node = WorkerNode(name=name, queue=queue or f"{SESSION}-{name}", port=port,
                          log_path=tmp_path / f"{name}.log", env=node_env,
                          token=node_env.get("TASKER_METRICS_TOKEN"),
                          extra_args=extra_args or [])
        nodes.append(node)
        return node.start(concurrency=concurrency, wait=wait)

    yield start
    for node in nodes:
        node.stop()


@pytest.fixture(scope="session")
def app() -> object:
    from tasker.celery_app import app

    return app


@pytest.fixture
def step_queue(queue_name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Workflow steps published from this test process go to the nodes' queue of this test."""
    from tasker.settings import reset_settings

    monkeypatch.setenv("TASKER_STEP_QUEUE", queue_name)
    reset_settings()
    yield queue_name
    monkeypatch.delenv("TASKER_STEP_QUEUE")
    reset_settings()
