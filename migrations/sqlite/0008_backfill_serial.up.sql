-- no-transaction
-- Keep in step with migrations/postgres/0008_backfill_serial.up.sql, which says what this is for.
-- SQLite cannot change a CHECK constraint in place: workflow_instance is rebuilt, with foreign
-- keys off (other tables refer to it), in a transaction of its own.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE backfill (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_name TEXT NOT NULL,
    parallel      INTEGER NOT NULL CHECK (parallel > 0),
    keep_going    BOOLEAN NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('running', 'success', 'failure', 'stopped')),
    state_reason  TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE TABLE workflow_instance_new (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_definition_id INTEGER NOT NULL REFERENCES workflow_definition (id),
    command_id             INTEGER REFERENCES command (id),
    workflow_name          TEXT NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                               'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting',
                               'discarded')),
    state_reason           TEXT,
    owner                  TEXT,
    epoch                  INTEGER NOT NULL DEFAULT 0,
    priority               INTEGER NOT NULL,
    params                 TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    started_at             TEXT,
    ended_at               TEXT,
    updated_at             TEXT NOT NULL,
    schedule_time          TEXT,
    timezone               TEXT NOT NULL DEFAULT 'UTC',
    run_kind               TEXT NOT NULL DEFAULT 'manual' CHECK (run_kind IN ('manual', 'schedule', 'backfill')),
    backfill_id            INTEGER REFERENCES backfill (id),
    backfill_seq           INTEGER,
    execution              TEXT NOT NULL DEFAULT 'parallel'
                               CHECK (execution IN ('parallel', 'serial_wait', 'serial_discard', 'serial_priority'))
);
INSERT INTO workflow_instance_new (id, workflow_definition_id, command_id, workflow_name, state, state_reason, owner,
    epoch, priority, params, created_at, started_at, ended_at, updated_at, schedule_time, timezone, run_kind)
SELECT id, workflow_definition_id, command_id, workflow_name, state, state_reason, owner,
    epoch, priority, params, created_at, started_at, ended_at, updated_at, schedule_time, timezone, run_kind
FROM workflow_instance;
-- ids are never reused: the new table carries on the old one's sequence
DELETE FROM sqlite_sequence WHERE name = 'workflow_instance_new';
UPDATE sqlite_sequence SET name = 'workflow_instance_new' WHERE name = 'workflow_instance';
DROP TABLE workflow_instance;
ALTER TABLE workflow_instance_new RENAME TO workflow_instance;
CREATE INDEX workflow_instance_owner ON workflow_instance (owner, state);
CREATE INDEX workflow_instance_state ON workflow_instance (state);
CREATE INDEX workflow_instance_waiting ON workflow_instance (workflow_name) WHERE state = 'waiting';
COMMIT;
PRAGMA foreign_keys = ON;
