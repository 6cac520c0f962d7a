-- The sampler's `records` source counts the open steps every interval. This
-- index holds only steps that are not finished, so that count costs what the
-- backlog holds, not what the history holds (tasker_tasks_open_idx does the
-- same for tasks).
CREATE INDEX tasker_steps_open_state_idx ON tasker_steps (state)
    WHERE state IN ('waiting', 'dispatched', 'running', 'waiting_retry');
