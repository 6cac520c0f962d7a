"""Workflows: task requests whose steps form a DAG, recorded in PostgreSQL.

* :mod:`.definition`: declaring a workflow (steps, dependencies, validation);
* :mod:`.records`: the SQL that records, claims, completes and recovers steps;
* :mod:`.engine`: submitting requests and running steps on the fleet (Celery
  tasks ``tasker.run_step`` and ``tasker.recover_steps``).
"""

from tasker.workflows.definition import (
    Step,
    StepContext,
    Workflow,
    WorkflowDefinitionError,
    get_workflow,
    workflows,
)

__all__ = ["Step", "StepContext", "Workflow", "WorkflowDefinitionError", "get_workflow",
           "workflows"]
