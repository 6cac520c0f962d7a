"""The names of the message headers tasker stamps: one place, no imports.

Read by the publisher side (:mod:`tasker.correlation`), the pool processes
(:mod:`tasker.metrics.recording`) and the fleet sampler (:mod:`tasker.sampler.broker`,
which imports neither Celery nor the metrics); why each has the form it has
is in :mod:`tasker.correlation`.
"""

__all__ = ["CORRELATION_HEADER", "PARENT_HEADER", "PUBLISHED_AT_HEADER", "DELIVERY_HEADER"]

#: A UUID naming one piece of work (not ``correlation_id``: Celery overwrites that).
CORRELATION_HEADER = "tasker_correlation_id"
#: The id of the work that started this one.
PARENT_HEADER = "tasker_parent_correlation_id"
#: Unix time of publishing, a decimal string with microseconds.
PUBLISHED_AT_HEADER = "tasker_published_at"
#: On workflow step messages: ``event`` or ``poll``.
DELIVERY_HEADER = "tasker_delivery"
