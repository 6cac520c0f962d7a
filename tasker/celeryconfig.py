"""Celery configuration, derived from tasker's validated settings.

Celery imports this module lazily, the first time the app's configuration is
read, so a bad setting stops start-up here with one line and exit code 2.
"""

from __future__ import annotations

import sys

from tasker import broker_client
from tasker.registry import discover_handler_modules
from tasker.settings import SettingsError, get_settings

try:
    _settings = get_settings()
except SettingsError as exc:
    print(f"tasker: configuration error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

if _settings.reuse_broker_client:
    broker_client.install()  # see tasker/broker_client.py: ~0.2 ms of MainProcess CPU per task

broker_url = _settings.broker_url
result_backend = _settings.result_backend
task_ignore_result = _settings.result_backend is None
broker_connection_retry_on_startup = True
# A worker whose broker is unreachable at start keeps retrying (the default),
# but each attempt must fail fast enough for /healthz to tell the truth.
broker_connection_timeout = 4.0
broker_transport_options = {"socket_connect_timeout": 4, "socket_timeout": 10}

task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
task_default_queue = "celery"
# tasker measures inside the worker; the event stream (-E) is not needed.
worker_send_task_events = False
task_send_sent_event = False
worker_hijack_root_logger = False

imports = [*discover_handler_modules(), "tasker.sampler.tasks", "tasker.workflows.engine"]

# Workflow steps and their recovery run on the step queue.
task_routes = {
    "tasker.run_step": {"queue": _settings.step_queue},
    "tasker.recover_steps": {"queue": _settings.step_queue},
}

beat_schedule = {
    "tasker.sample_fleet": {
        "task": "tasker.sample_fleet",
        "schedule": _settings.sample_interval,
        # A sample older than one interval is worthless: let the broker drop it.
        "options": {"expires": _settings.sample_interval},
    },
    "tasker.recover_steps": {
        "task": "tasker.recover_steps",
        "schedule": _settings.recovery_interval,
        "options": {"expires": _settings.recovery_interval},
    },
}
