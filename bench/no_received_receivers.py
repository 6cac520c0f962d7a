"""Disconnects tasker's ``task_received`` receiver (``--include bench.no_received_receivers``).

Not a way to run tasker: the throughput benchmark's ``tasker_no_received``
variant uses it to show what the MainProcess's per-message receivers cost
(the received counter and the correlation check at receipt stop working).
"""

from celery.signals import task_received

from tasker import receipt

task_received.disconnect(receipt.on_task_received)
