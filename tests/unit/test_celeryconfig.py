"""Celery's configuration as tasker builds it (issue 2.4, items 1, 5 and 6)."""

from __future__ import annotations

import importlib

from celery.app.defaults import NAMESPACES, flatten


def _public_names() -> set[str]:
    module = importlib.import_module("tasker.celeryconfig")
    return {name for name in vars(module) if not name.startswith("_")}


def test_config_module_exports_only_celery_settings(app) -> None:
    # Flower's worker Config tab is `inspect conf`: every non-default key of the
    # app's configuration. The module's imports (SettingsError, sys,
    # get_settings, annotations) used to show there as settings.
    from celery.worker.control import _wanted_config_key

    known = {key for key, _ in flatten(NAMESPACES)} | {"deprecated_settings"}
    shown = {k for k in app.conf.table(with_defaults=False) if _wanted_config_key(k)}
    assert shown - known == set()
    assert _public_names() - known == set()


def test_periodic_work_has_a_queue_of_its_own(app) -> None:
    from tasker.periodic import PERIODIC_QUEUE

    routes = app.conf.task_routes
    assert routes["tasker.sample_fleet"] == {"queue": PERIODIC_QUEUE}
    assert routes["tasker.recover_steps"] == {"queue": PERIODIC_QUEUE}
    assert app.conf.task_default_queue != PERIODIC_QUEUE
    # No pool consumes it: only the MainProcess's PeriodicWork step does.
    assert PERIODIC_QUEUE not in app.amqp.queues or not app.conf.task_queues


def test_beat_keeps_no_schedule_file_in_the_working_directory(app) -> None:
    # The persistent scheduler wrote celerybeat-schedule.* into the CWD.
    assert app.conf.beat_scheduler == "tasker.schedule_monitor:MonitoredScheduler"


def test_periodic_queue_follows_a_private_step_queue() -> None:
    from tasker.periodic import periodic_queue_name

    assert periodic_queue_name("celery") == "tasker.periodic"
    assert periodic_queue_name("fleet-b") == "fleet-b.periodic"
