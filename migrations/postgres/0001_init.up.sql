-- Porpoise schema, Postgres flavour. Keep in step with migrations/sqlite/0001_init.up.sql.

CREATE TABLE workflow_definition (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    spec_yaml   TEXT NOT NULL,
    -- the validated spec in canonical JSON: an identical re-apply compares equal
    spec_json   TEXT NOT NULL,
    task_count  INTEGER NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    UNIQUE (name, version)
);

CREATE TABLE command (
    id                     BIGSERIAL PRIMARY KEY,
    kind                   TEXT NOT NULL,
    workflow_definition_id BIGINT NOT NULL REFERENCES workflow_definition (id),
    params                 TEXT NOT NULL,
    priority               INTEGER NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL,
    claimed_by             TEXT,
    claimed_at             TIMESTAMPTZ
);
CREATE INDEX command_unclaimed ON command (priority, id) WHERE claimed_by IS NULL;

-- masters LISTEN on this channel to claim new commands without polling
CREATE FUNCTION porpoise_notify_command() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('porpoise_command', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER command_notify AFTER INSERT ON command
    FOR EACH ROW EXECUTE FUNCTION porpoise_notify_command();

CREATE TABLE workflow_instance (
    id                     BIGSERIAL PRIMARY KEY,
    workflow_definition_id BIGINT NOT NULL REFERENCES workflow_definition (id),
    command_id             BIGINT REFERENCES command (id),
    workflow_name          TEXT NOT NULL,
    state                  TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                               'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting')),
    state_reason           TEXT,
    owner                  TEXT,
    epoch                  BIGINT NOT NULL DEFAULT 0,
    priority               INTEGER NOT NULL,
    params                 TEXT NOT NULL,
    created_at             TIMESTAMPTZ NOT NULL,
    started_at             TIMESTAMPTZ,
    ended_at               TIMESTAMPTZ,
    updated_at             TIMESTAMPTZ NOT NULL
);
CREATE INDEX workflow_instance_owner ON workflow_instance (owner, state);
CREATE INDEX workflow_instance_state ON workflow_instance (state);

CREATE TABLE task_instance (
    id                   BIGSERIAL PRIMARY KEY,
    workflow_instance_id BIGINT NOT NULL REFERENCES workflow_instance (id),
    task_name            TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('submitted', 'dispatched', 'running', 'success',
                             'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting')),
    attempt              INTEGER NOT NULL,
    worker_addr          TEXT,
    exit_code            INTEGER,
    created_at           TIMESTAMPTZ NOT NULL,
    started_at           TIMESTAMPTZ,
    ended_at             TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL,
    UNIQUE (workflow_instance_id, task_name)
);
CREATE INDEX task_instance_worker ON task_instance (worker_addr, state);

CREATE TABLE dead_letter (
    id                   BIGSERIAL PRIMARY KEY,
    workflow_instance_id BIGINT,
    task_instance_id     BIGINT,
    event_kind           TEXT NOT NULL,
    event                TEXT NOT NULL,
    reason               TEXT NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL
);
