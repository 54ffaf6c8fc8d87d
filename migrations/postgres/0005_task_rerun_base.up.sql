-- The attempts a task instance had before its run was last rerun: a rerun starts a fresh set of
-- retries, so retries used = attempt - 1 - failovers - rerun_base.
ALTER TABLE task_instance ADD COLUMN rerun_base INTEGER NOT NULL DEFAULT 0;
