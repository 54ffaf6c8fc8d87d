ALTER TABLE command DROP COLUMN workflow_instance_id;
