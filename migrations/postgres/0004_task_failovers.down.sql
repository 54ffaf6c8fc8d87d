ALTER TABLE task_instance DROP COLUMN failovers;
