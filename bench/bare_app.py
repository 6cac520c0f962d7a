"""Bare Celery, the baseline: the same broker and the same task bodies as tasker.

Run with ``celery -A bench.bare_app worker --pool prefork -c 2 -Q <queue> ...``.
The broker comes from ``TASKER_BROKER_URL`` so that both variants of a
benchmark talk to the same Redis database. The settings below mirror the
broker-related part of :mod:`tasker.celeryconfig` (serializer, no results,
timeouts), so a comparison measures tasker's observability and nothing else.
This module must not import tasker. The one exception is the diagnostic
variant ``bare_client_reuse`` (``BENCH_REUSE_BROKER_CLIENT=1``), which loads
the single file ``tasker/contracts/kombu_client.py`` by path, not the tasker package.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from celery import Celery

from bench.tasks import register_bench_tasks

app = Celery("bench_bare")
app.conf.update(
    broker_url=os.environ.get("TASKER_BROKER_URL", "redis://127.0.0.1:6379/12"),
    result_backend=None,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    broker_connection_timeout=4.0,
    broker_transport_options={"socket_connect_timeout": 4, "socket_timeout": 10},
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_default_queue="celery",
    worker_send_task_events=False,  # ``-E`` turns them on (the bare_events variant)
    task_send_sent_event=False,
)


@app.task(name="diagnostics.noop")
def noop() -> None:
    """Do nothing: the same body as tasker's ``diagnostics.noop``."""


register_bench_tasks(app)


def _reuse_broker_client() -> None:
    """Bare Celery plus tasker's kombu changes alone (tasker/contracts/kombu_client.py)."""
    path = Path(__file__).resolve().parent.parent / "tasker" / "contracts" / "kombu_client.py"
    spec = importlib.util.spec_from_file_location("bench_broker_client", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not module.install():
        raise SystemExit("bench.bare_app: kombu's Redis channel could not be changed")


if os.environ.get("BENCH_REUSE_BROKER_CLIENT") == "1":
    _reuse_broker_client()
