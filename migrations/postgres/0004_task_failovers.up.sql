-- How many attempts of a task instance were failed over (their worker was lost). A failover
-- starts a new attempt without using up the task's retries: retries left = retries - (attempt - 1 - failovers).
ALTER TABLE task_instance ADD COLUMN failovers INTEGER NOT NULL DEFAULT 0;
