DROP TABLE task_group;
UPDATE task_instance SET state = 'stopped' WHERE state = 'killed';
UPDATE task_instance SET state = 'success' WHERE state = 'forced-success';
CREATE TABLE task_instance_old (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_instance_id INTEGER NOT NULL REFERENCES workflow_instance (id),
    task_name            TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                             'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting')),
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
    UNIQUE (workflow_instance_id, task_name)
);
INSERT INTO task_instance_old SELECT id, workflow_instance_id, task_name, state, attempt, worker_addr, exit_code,
    created_at, started_at, ended_at, updated_at, warning, failovers, rerun_base FROM task_instance;
DELETE FROM sqlite_sequence WHERE name = 'task_instance_old';
UPDATE sqlite_sequence SET name = 'task_instance_old' WHERE name = 'task_instance';
DROP TABLE task_instance;
ALTER TABLE task_instance_old RENAME TO task_instance;
CREATE INDEX task_instance_worker ON task_instance (worker_addr, state);
