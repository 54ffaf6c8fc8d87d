-- A run of a workflow whose runs must not overlap that was discarded because one was active.
ALTER TABLE workflow_instance DROP CONSTRAINT workflow_instance_state_check;
ALTER TABLE workflow_instance ADD CONSTRAINT workflow_instance_state_check CHECK (state IN ('submitted', 'dispatched',
    'running', 'success', 'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting', 'discarded'));

-- A backfill: one run per date of a range, held `waiting` and released up to `parallel` at a
-- time, in `backfill_seq` order, by whichever master looks (it is stored, not held by one).
CREATE TABLE backfill (
    id            BIGSERIAL PRIMARY KEY,
    workflow_name TEXT NOT NULL,
    parallel      INTEGER NOT NULL CHECK (parallel > 0),
    keep_going    BOOLEAN NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'success', 'failure', 'stopped')),
    state_reason  TEXT,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);
ALTER TABLE workflow_instance ADD COLUMN backfill_id BIGINT REFERENCES backfill (id);
ALTER TABLE workflow_instance ADD COLUMN backfill_seq INTEGER;
-- The workflow's execution type when the run was requested: a run of a serial workflow is
-- created `waiting` and released when no other run of the workflow is active.
ALTER TABLE workflow_instance ADD COLUMN execution TEXT NOT NULL DEFAULT 'parallel'
    CHECK (execution IN ('parallel', 'serial_wait', 'serial_discard', 'serial_priority'));
CREATE INDEX workflow_instance_waiting ON workflow_instance (workflow_name) WHERE state = 'waiting';
