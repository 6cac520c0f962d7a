-- Who claimed a step's current attempt: '<hostname>:<pid>:<backend pid>' (the pool
-- process and its database session).
-- A delivery that finds the step's lease held by a process of its own host that
-- no longer exists (SIGKILL while its backend still runs a query, which
-- PostgreSQL notices only when the query ends) ends that backend and takes over
-- at once, instead of leaving the step to the recovery poller.
ALTER TABLE tasker_steps ADD COLUMN claimed_by text;
