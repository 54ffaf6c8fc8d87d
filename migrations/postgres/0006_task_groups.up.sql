-- Task states for an operator's actions: `killed` (a task killed on its worker by a stop or a
-- task kill) and `forced-success` (an operator marked a task successful: the run goes on as if it
-- had succeeded). Workflow instances never take these states.
ALTER TABLE task_instance DROP CONSTRAINT task_instance_state_check;
ALTER TABLE task_instance ADD CONSTRAINT task_instance_state_check CHECK (state IN ('submitted', 'dispatched',
    'running', 'success', 'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting',
    'killed', 'forced-success'));

-- Task groups: at most `slots` task instances of a group hold a slot at once. A task instance
-- holds a slot while it is submitted, dispatched, running or need-fault-tolerance, so a slot is
-- taken and given back by the same write that changes the task's state: no slot outlives a crash.
CREATE TABLE task_group (
    name        TEXT PRIMARY KEY,
    slots       INTEGER NOT NULL CHECK (slots > 0),
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
-- The group a task instance belongs to and its priority there; `group_waiting_since` is when it
-- began waiting for a slot (waiters take slots by priority, then first come), null otherwise.
ALTER TABLE task_instance ADD COLUMN task_group TEXT;
ALTER TABLE task_instance ADD COLUMN task_group_priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_instance ADD COLUMN group_waiting_since TIMESTAMPTZ;
CREATE INDEX task_instance_group ON task_instance (task_group, state) WHERE task_group IS NOT NULL;
