"""Worker-node metrics: definitions, recording, the multiprocess store and serving.

Follow one task through the code:

* :mod:`tasker.correlation` stamps the publish time and the correlation id
  into the message headers (names in :mod:`tasker.headers`);
* in the MainProcess, :mod:`tasker.receipt` counts each message received;
* in the pool process, :mod:`tasker.metrics.recording` (Celery signals)
  records into the metric objects of :mod:`tasker.metrics.definitions`, the
  native histogram buckets of :mod:`tasker.metrics.native_series` and the
  shared :mod:`tasker.metrics.node_state` (rate window, latency EMA);
* :mod:`tasker.metrics.values` writes them to per-process files in the
  node's directory (:mod:`tasker.metrics.identity` names them);
* :mod:`tasker.metrics.store` reads and merges those files, folding dead
  processes into an archive so the directory stays small;
* :mod:`tasker.metrics.node` adds the node-level values and the JSON snapshot;
* :mod:`tasker.metrics.server` serves ``/metrics`` (text from
  :mod:`tasker.metrics.exposition`, or protobuf from
  :mod:`tasker.metrics.protobuf` when asked), ``/metrics.json``, ``/healthz``
  (:mod:`tasker.broker_health`).
"""
