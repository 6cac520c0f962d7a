-- What the example workflows (workers/linear.py, diamond.py, tree.py, mixed.py)
-- write: one row per step execution that committed. A step that ran twice
-- would show twice, which is how the tests check effects are applied once.
CREATE TABLE tasker_workflow_ledger (
    id          bigserial PRIMARY KEY,
    task_uuid   uuid        NOT NULL,
    step        text        NOT NULL,
    value       bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasker_workflow_ledger_task_idx ON tasker_workflow_ledger (task_uuid);
