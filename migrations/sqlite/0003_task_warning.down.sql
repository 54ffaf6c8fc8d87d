ALTER TABLE task_instance DROP COLUMN warning;
