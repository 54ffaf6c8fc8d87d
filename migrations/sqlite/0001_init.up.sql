-- Porpoise schema, SQLite flavour (standalone). Keep in step with migrations/postgres/.

CREATE TABLE workflow_definition (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    spec_yaml   TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    task_count  INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE command (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind                   TEXT NOT NULL,
    workflow_definition_id INTEGER NOT NULL REFERENCES workflow_definition (id),
    params                 TEXT NOT NULL,
    priority               INTEGER NOT NULL,
    created_at             TEXT NOT NULL,
    claimed_by             TEXT,
    claimed_at             TEXT
);
CREATE INDEX command_unclaimed ON command (priority, id) WHERE claimed_by IS NULL;

CREATE TABLE workflow_instance (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_definition_id INTEGER NOT NULL REFERENCES workflow_definition (id),
    command_id             INTEGER REFERENCES command (id),
    workflow_name          TEXT NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                               'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting')),
    state_reason           TEXT,
    owner                  TEXT,
    epoch                  INTEGER NOT NULL DEFAULT 0,
    priority               INTEGER NOT NULL,
    params                 TEXT NOT NULL,
    created_at             TEXT NOT NULL,
    started_at             TEXT,
    ended_at               TEXT,
    updated_at             TEXT NOT NULL
);
CREATE INDEX workflow_instance_owner ON workflow_instance (owner, state);
CREATE INDEX workflow_instance_state ON workflow_instance (state);

CREATE TABLE task_instance (
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
    UNIQUE (workflow_instance_id, task_name)
);
CREATE INDEX task_instance_worker ON task_instance (worker_addr, state);

CREATE TABLE dead_letter (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_instance_id INTEGER,
    task_instance_id     INTEGER,
    event_kind           TEXT NOT NULL,
    event                TEXT NOT NULL,
    reason               TEXT NOT NULL,
    created_at           TEXT NOT NULL
);
