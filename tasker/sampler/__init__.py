"""Pure sampling of the fleet's broker queues and database (no metrics, no Celery app).

The beat task that runs a round and records it is :mod:`tasker.tasks.fleet_sampler`.
"""
