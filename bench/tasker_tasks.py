"""Registers :mod:`bench.tasks` on tasker's app (``--include bench.tasker_tasks``)."""

from bench.tasks import register_bench_tasks
from tasker import app

register_bench_tasks(app)
