"""Pure sampling of the fleet's broker queues and database (no metrics, no Celery app)."""
