"""Business handlers: one namespace per module (``workers/<namespace>.py``).

Every module here is discovered automatically; a function decorated with
``@tasker.handler`` becomes the Celery task ``<namespace>.<function name>``.
"""
