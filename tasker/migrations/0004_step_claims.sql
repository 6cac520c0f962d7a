-- Issue [2.2]: attempts are counted when a step is claimed, finalized tasks
-- leave no open step, and submitting is safe to retry.

-- 'cancelled': a step that will never run because its task was finalized
-- (another step failed for good). Terminal, like 'complete' and 'error'.
ALTER TABLE tasker_steps DROP CONSTRAINT tasker_steps_state_check;
ALTER TABLE tasker_steps ADD CONSTRAINT tasker_steps_state_check CHECK (state IN (
    'waiting', 'dispatched', 'running', 'waiting_retry', 'complete', 'error', 'cancelled'));

-- claimed_at: when the current attempt was claimed (state 'running').
-- dispatches: messages published for the step (event, retry and poll), so a
-- reader can tell how many copies the fleet ever had to deal with.
ALTER TABLE tasker_steps ADD COLUMN claimed_at timestamptz;
ALTER TABLE tasker_steps ADD COLUMN dispatches integer NOT NULL DEFAULT 0;
UPDATE tasker_steps SET dispatches = 1 WHERE dispatched_at IS NOT NULL;

-- The recovery poller's second scan: claimed steps whose attempt may be dead.
CREATE INDEX tasker_steps_running_idx ON tasker_steps (claimed_at) WHERE state = 'running';

-- A retried submit with the same key finds the request the first one recorded.
ALTER TABLE tasker_tasks ADD COLUMN idempotency_key text;
CREATE UNIQUE INDEX tasker_tasks_idempotency_key_idx ON tasker_tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Tasks finalized before this version kept their open steps: close them, so
-- the backlog series count only work that can still run.
UPDATE tasker_steps s SET state = 'cancelled', completed_at = COALESCE(s.completed_at, now()),
       updated_at = now(), error = COALESCE(s.error, 'cancelled: the task was finalized')
  FROM tasker_tasks t
 WHERE t.uuid = s.task_uuid AND t.state IN ('complete', 'error')
   AND s.state IN ('waiting', 'dispatched', 'running', 'waiting_retry');
