-- Keep in step with migrations/postgres/0006_task_groups.up.sql, which says what this is for.
-- SQLite cannot change a CHECK constraint in place: task_instance is rebuilt (no table refers to it).
CREATE TABLE task_instance_new (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_instance_id INTEGER NOT NULL REFERENCES workflow_instance (id),
    task_name            TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                             'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting',
                             'killed', 'forced-success')),
    attempt              INTEGER NOT NULL,
    worker_addr          TEXT,
    exit_code            INTEGER,
    created_at           TEXT NOT NULL,
    started_at           TEXT,
    ended_at             TEXT,
    updated_at           TEXT NOT NULL,
    warning              TEXT,
    failovers            INTEGER NOT NULL DEFAULT 0,
    rerun_base           INTEGER NOT NULL DEFAULT 0,
    task_group           TEXT,
    task_group_priority  INTEGER NOT NULL DEFAULT 0,
    group_waiting_since  TEXT,
    UNIQUE (workflow_instance_id, task_name)
);
INSERT INTO task_instance_new (id, workflow_instance_id, task_name, state, attempt, worker_addr, exit_code,
    created_at, started_at, ended_at, updated_at, warning, failovers, rerun_base)
SELECT id, workflow_instance_id, task_name, state, attempt, worker_addr, exit_code,
    created_at, started_at, ended_at, updated_at, warning, failovers, rerun_base FROM task_instance;
-- ids are never reused: the new table carries on the old one's sequence
DELETE FROM sqlite_sequence WHERE name = 'task_instance_new';
UPDATE sqlite_sequence SET name = 'task_instance_new' WHERE name = 'task_instance';
DROP TABLE task_instance;
ALTER TABLE task_instance_new RENAME TO task_instance;
CREATE INDEX task_instance_worker ON task_instance (worker_addr, state);
CREATE INDEX task_instance_group ON task_instance (task_group, state) WHERE task_group IS NOT NULL;

CREATE TABLE task_group (
    name        TEXT PRIMARY KEY,
    slots       INTEGER NOT NULL CHECK (slots > 0),
    description TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
