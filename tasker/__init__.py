"""tasker: a Celery worker fleet with observability built in.

``celery -A tasker worker`` finds the Celery app as ``tasker.app``.
"""

from tasker.celery_app import app, handler
from tasker.correlation import current_correlation_id

__all__ = ["app", "current_correlation_id", "handler"]
