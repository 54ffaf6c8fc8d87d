-- See migrations/postgres/0002_run_commands.up.sql.
ALTER TABLE command ADD COLUMN workflow_instance_id INTEGER REFERENCES workflow_instance (id);
