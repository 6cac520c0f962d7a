"""Leaves tasker's receipt out of the node (``--include bench.no_received_receivers``).

Not a way to run tasker: the throughput benchmark's ``tasker_no_received``
variant uses it to show what the MainProcess's work on each message's receipt
costs (the received counter and the correlation check at receipt stop working).
``--include`` modules are imported before Celery sends ``worker_init``, so the
receipt step is never added.
"""

from celery.signals import worker_init

from tasker import receipt

worker_init.disconnect(receipt._add_receipt_step)
