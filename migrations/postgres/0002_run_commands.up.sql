-- A start command names the workflow instance (the run) created with it, so the run id is known
-- the moment the run is requested; the master that claims the command adopts the instance.
ALTER TABLE command ADD COLUMN workflow_instance_id BIGINT REFERENCES workflow_instance (id);
