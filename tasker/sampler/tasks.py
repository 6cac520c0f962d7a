"""Moved: the fleet sampler's Celery task is :mod:`tasker.tasks.fleet_sampler`.

Kept only until :mod:`tasker.periodic` imports the new path; the pure sampler
holds no Celery task.
"""

from tasker.tasks.fleet_sampler import run_sample_round, sample_fleet

__all__ = ["sample_fleet", "run_sample_round"]
