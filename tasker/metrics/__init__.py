"""Worker-node metrics: definitions, recording, the multiprocess store and serving.

Follow one task through the code:

* :mod:`tasker.correlation` stamps the publish time into the message headers;
* :mod:`tasker.metrics.recording` (Celery signals) records into the metric
  objects of :mod:`tasker.metrics.definitions` and the shared
  :mod:`tasker.metrics.node_state` (rate window, latency EMA);
* prometheus_client writes them to per-process files in the node's directory
  (:mod:`tasker.metrics.identity` names them);
* :mod:`tasker.metrics.store` reads and merges those files, folding dead
  processes into an archive so the directory stays small;
* :mod:`tasker.metrics.node` adds the node-level values and the JSON snapshot;
* :mod:`tasker.metrics.server` serves ``/metrics``, ``/metrics.json``, ``/healthz``.
"""
