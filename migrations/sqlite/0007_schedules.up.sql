-- Keep in step with migrations/postgres/0007_schedules.up.sql, which says what this is for.
-- Schedules: a workflow runs by itself at the fire times of a cron expression in a time zone.
-- `done_until`: every fire time up to it is done with (fired, or skipped by the catchup policy).
CREATE TABLE schedule (
    workflow_name TEXT PRIMARY KEY,
    cron          TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    start_at      TEXT,
    end_at        TEXT,
    catchup       TEXT NOT NULL CHECK (catchup IN ('none', 'latest', 'all')),
    -- set by the workflow's spec (apply replaces it) rather than by `porpoise schedule create`
    from_spec     BOOLEAN NOT NULL,
    paused        BOOLEAN NOT NULL DEFAULT 0,
    done_until    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
-- One row per fire time that produced a run: the key makes a second firing (by another master,
-- or after a lost answer) a no-op, in the same transaction as the run's command.
CREATE TABLE schedule_fire (
    workflow_name        TEXT NOT NULL,
    fire_time            TEXT NOT NULL,
    workflow_instance_id INTEGER NOT NULL REFERENCES workflow_instance (id),
    created_at           TEXT NOT NULL,
    PRIMARY KEY (workflow_name, fire_time)
);
-- When a master last looked at the schedules: a long gap means no master was up, and the
-- fire times in it were missed (the catchup policy decides). Masters take turns on this row.
CREATE TABLE scheduler_clock (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT
);
INSERT INTO scheduler_clock (id, checked_at) VALUES (1, NULL);
-- Every run has a schedule time (its fire time, its backfill date, or when it was requested)
-- in a time zone, for its date parameters; and says how it was started.
ALTER TABLE workflow_instance ADD COLUMN schedule_time TEXT;
ALTER TABLE workflow_instance ADD COLUMN timezone TEXT NOT NULL DEFAULT 'UTC';
ALTER TABLE workflow_instance ADD COLUMN run_kind TEXT NOT NULL DEFAULT 'manual'
    CHECK (run_kind IN ('manual', 'schedule', 'backfill'));
