"""The Celery application object, assembled: tasker's top layer below the package.

Creating the app touches nothing outside this process: its configuration is the
module :mod:`tasker.celeryconfig`, which Celery imports the first time the
configuration is read (that is where settings are parsed and validated).
Signal receivers and bootsteps are connected here because that is how Celery
finds them in every process that imports ``tasker``.

Imports flow one way (``tests/unit/test_import_layers.py`` checks it): the
modules connected here never import this one; a bootstep gets the app from
``worker.app`` or ``consumer.app``, a task from ``self.app``. Only the package
(``tasker/__init__.py``) and the commands (``tasker.cli``) import this module.
"""

import logging
from collections.abc import Callable
from typing import Any, TypeVar, overload

import click
from celery import Celery
from celery.signals import beat_init, setup_logging
from click.core import ParameterSource

# Imported for their side effect of connecting Celery signal receivers too.
from tasker import correlation, schedule_monitor, tracing, worker_process  # noqa: F401
from tasker.broker_health import BrokerConnected
from tasker.broker_loss import SurviveBrokerLoss
from tasker.decode_errors import DecodeErrorCounter
from tasker.flower_rows import FlowerRows
from tasker.logs import configure_logging
from tasker.metrics import pool_processes, recording  # noqa: F401
from tasker.metrics.bootstep import TaskerMetricsStep
from tasker.periodic import PeriodicWork
from tasker.receipt import Receipt
from tasker.registry import namespace_of, registry
from tasker.settings import get_settings

# tasker's loader prints one line for a handler module that does not import.
app = Celery("tasker", task_cls="tasker.task:TaskerTask", loader="tasker.loader:TaskerLoader")
app.config_from_object("tasker.celeryconfig")

app.steps["worker"].add(TaskerMetricsStep)
app.steps["consumer"].add(Receipt)  # counts and checks each message as Celery hands it over
app.steps["consumer"].add(DecodeErrorCounter)
app.steps["consumer"].add(SurviveBrokerLoss)
app.steps["consumer"].add(BrokerConnected)  # /healthz: connected and consuming
app.steps["consumer"].add(PeriodicWork)  # tasker's periodic work, in the MainProcess
app.steps["consumer"].add(FlowerRows)  # the snapshot row by row on Flower's worker page

__all__ = ["app", "handler"]

F = TypeVar("F", bound=Callable[..., Any])


@overload
def handler(fn: F) -> F: ...
@overload
def handler(*, name: str | None = None, **task_options: Any) -> Callable[[F], F]: ...


def handler(fn: Callable[..., Any] | None = None, *, name: str | None = None,
            **task_options: Any) -> Any:
    """Register ``fn`` as the Celery task ``<namespace>.<name>`` of tasker's app.

    The namespace is the module's in ``workers/`` (:func:`tasker.registry.namespace_of`);
    the name is remembered in :data:`tasker.registry.registry`.

    Args:
        fn: the handler function (when used as a bare ``@handler``).
        name: the handler name inside its namespace (default: the function name).
        **task_options: passed to ``app.task`` (``max_retries``, ``acks_late``...).
    """

    def register(func: Callable[..., Any]) -> Any:
        namespace = namespace_of(func.__module__)
        task_name = f"{namespace}.{name or func.__name__}"
        registry.add(namespace, task_name)
        return app.task(name=task_name, **task_options)(func)

    return register(fn) if fn is not None else register


@setup_logging.connect(weak=False)
def _configure_logging(loglevel: object = None, **_: object) -> None:
    # Receiving this signal stops Celery from configuring logging itself.
    settings = get_settings()
    level = _loglevel_from_command_line(loglevel) or settings.log_level
    configure_logging(settings.log_format, level)  # type: ignore[arg-type]
    correlation.log_task_starts_if_enabled()


@beat_init.connect(weak=False)
def _log_beat_schedule(**_: Any) -> None:
    """One ``beat.started`` line: what beat sends, how often, and to which queue.

    Why: beat's own start-up says nothing about the schedule, so an operator
    could not tell from its log whether the sampler and recovery are scheduled.
    """
    routes = app.conf.task_routes or {}
    schedule = {
        name: {"every_seconds": float(getattr(entry["schedule"], "seconds", entry["schedule"])),
               "queue": (routes.get(entry["task"]) or {}).get("queue",
                                                              app.conf.task_default_queue)}
        for name, entry in sorted((app.conf.beat_schedule or {}).items())
    }
    logging.getLogger("tasker.beat").info(
        "beat.started", extra={"schedule": schedule, "scheduler": app.conf.beat_scheduler})


def _loglevel_from_command_line(loglevel: object) -> object:
    """The ``-l/--loglevel`` a user gave, or None: then ``TASKER_LOG_LEVEL`` decides.

    ``celery worker`` (and ``beat``) without ``-l`` passes its option's default,
    ``WARNING``, to this signal as if it had been given; click says where the
    value came from.
    """
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if "loglevel" in ctx.params:
            source = ctx.get_parameter_source("loglevel")
            defaulted = source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
            return None if defaulted else loglevel
        ctx = ctx.parent
    return loglevel  # not started from Celery's command line: the caller chose it
