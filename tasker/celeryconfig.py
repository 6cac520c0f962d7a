"""Celery configuration, derived from tasker's validated settings.

Celery imports this module lazily, the first time the app's configuration is
read, so a bad setting stops start-up here with one line and exit code 2.

Every public name of this module is a Celery setting: Celery (and Flower's
config view) reads them all, so helpers are imported under private names.
"""

import sys as _sys

from tasker import broker_client as _broker_client
from tasker.periodic_queue import periodic_queue_name as _periodic_queue_name
from tasker.registry import discover_handler_modules as _discover_handler_modules
from tasker.settings import SettingsError as _SettingsError
from tasker.settings import get_settings as _get_settings

try:
    _settings = _get_settings()
except _SettingsError as _exc:
    print(f"tasker: configuration error: {_exc}", file=_sys.stderr)
    raise SystemExit(2) from None

# tasker's changes to kombu's Redis transport (tasker/contracts/kombu_client.py);
# another broker never loads that transport (69 ms to import).
if _settings.reuse_broker_client and _settings.broker_url.split(":", 1)[0].split("+")[0] in (
        "redis", "rediss", "sentinel"):
    _broker_client.install()

broker_url = _settings.broker_url
result_backend = _settings.result_backend
task_ignore_result = _settings.result_backend is None
broker_connection_retry_on_startup = True
# A worker whose broker is unreachable at start keeps retrying (the default),
# but each attempt must fail fast enough for /healthz to tell the truth.
broker_connection_timeout = 4.0
broker_transport_options = {"socket_connect_timeout": 4, "socket_timeout": 10}
if _settings.broker_master_name:  # a sentinel:// broker: which master to ask the sentinels for
    broker_transport_options["master_name"] = _settings.broker_master_name

task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
task_default_queue = "celery"
# tasker measures inside the worker; the event stream (-E) is not needed.
worker_send_task_events = False
task_send_sent_event = False
worker_hijack_root_logger = False

imports = [*_discover_handler_modules(), "tasker.tasks.fleet_sampler", "tasker.workflows.engine"]

# tasker's own periodic work goes to a queue of its own that no pool consumes:
# every node's MainProcess takes it (tasker/periodic.py), so it never waits
# behind user messages nor for a free pool process. Workflow steps run on the
# step queue.
_periodic_queue = _periodic_queue_name(_settings.step_queue)
task_routes = {
    "tasker.run_step": {"queue": _settings.step_queue},
    "tasker.recover_steps": {"queue": _periodic_queue},
    "tasker.sample_fleet": {"queue": _periodic_queue},
}

# Beat keeps its schedule in memory: the persistent scheduler left
# celerybeat-schedule.* files in the working directory, and remembering the
# last run of a 15-second sampler across restarts is worth nothing.
# tasker's subclass stamps each message with its entry and due time (periodic-task
# monitoring, tasker/schedule_monitor.py); otherwise it is Celery's in-memory one.
beat_scheduler = "tasker.schedule_monitor:MonitoredScheduler"
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
