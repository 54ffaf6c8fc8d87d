ALTER TABLE task_instance DROP COLUMN rerun_base;
