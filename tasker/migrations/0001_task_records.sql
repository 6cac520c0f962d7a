-- Task requests and their steps (SPEC §7). Correlation ids are UUIDv7.
CREATE TABLE tasker_tasks (
    uuid                   uuid PRIMARY KEY,
    namespace              text        NOT NULL,
    name                   text        NOT NULL,
    version                text        NOT NULL DEFAULT '1',
    state                  text        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'in_progress', 'complete', 'error')),
    context                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    results                jsonb,
    error                  text,
    correlation_id         uuid        NOT NULL,
    parent_correlation_id  uuid,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    completed_at           timestamptz,
    duration_ms            double precision
);
CREATE INDEX tasker_tasks_correlation_id_idx ON tasker_tasks (correlation_id);
CREATE INDEX tasker_tasks_parent_correlation_id_idx ON tasker_tasks (parent_correlation_id)
    WHERE parent_correlation_id IS NOT NULL;
CREATE INDEX tasker_tasks_open_idx ON tasker_tasks (state, created_at)
    WHERE state IN ('pending', 'in_progress');

CREATE TABLE tasker_steps (
    uuid                   uuid PRIMARY KEY,
    task_uuid              uuid        NOT NULL REFERENCES tasker_tasks (uuid) ON DELETE CASCADE,
    name                   text        NOT NULL,
    handler                text        NOT NULL,
    depends_on             text[]      NOT NULL DEFAULT '{}',
    state                  text        NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'dispatched', 'running', 'waiting_retry', 'complete', 'error')),
    attempts               integer     NOT NULL DEFAULT 0,
    max_attempts           integer     NOT NULL DEFAULT 3,
    results                jsonb,
    error                  text,
    delivery               text CHECK (delivery IN ('event', 'poll')),
    correlation_id         uuid        NOT NULL,
    parent_correlation_id  uuid,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    dispatched_at          timestamptz,
    started_at             timestamptz,
    completed_at           timestamptz,
    next_attempt_at        timestamptz,
    UNIQUE (task_uuid, name)
);
CREATE INDEX tasker_steps_correlation_id_idx ON tasker_steps (correlation_id);
-- The recovery poller's scan: dispatched (or due for retry) and not started.
CREATE INDEX tasker_steps_undelivered_idx ON tasker_steps (dispatched_at)
    WHERE state IN ('dispatched', 'waiting_retry');
