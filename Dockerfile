# syntax=docker/dockerfile:1
#
# One image for every tasker process: worker, beat, Flower and `tasker migrate`.
# docker-compose.yml picks the command per service.
#
# PROMETHEUS_MULTIPROC_DIR is deliberately NOT set here: it must be a directory
# that no two live worker nodes share. docker-compose.yml gives each worker
# container its own tmpfs; without the variable tasker creates a fresh per-node
# directory under the system temp dir (SPEC §2).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# An unprivileged user owns only what it must write: beat's schedule, Flower's
# state database and the default multiprocess-metrics directory.
RUN groupadd --system --gid 10001 tasker \
    && useradd --system --uid 10001 --gid tasker --no-create-home \
        --home-dir /app --shell /usr/sbin/nologin tasker \
    && install -d -o tasker -g tasker -m 0750 \
        /var/lib/tasker /var/lib/tasker/beat /var/lib/tasker/flower /run/tasker-metrics

# psycopg[binary] and psutil ship manylinux wheels: no compiler, no libpq.
COPY pyproject.toml README.md ./
COPY tasker ./tasker
COPY workers ./workers
RUN pip install .

COPY flower.conf ./flower.conf

USER tasker

# 9800: a worker node's /metrics, /metrics.json and /healthz; 5555: Flower.
EXPOSE 9800 5555

# Celery's warm shutdown on SIGTERM lets running tasks finish; give containers
# a stop grace period longer than your longest task.
CMD ["celery", "-A", "tasker", "worker", "--pool", "prefork", "--loglevel", "INFO"]
