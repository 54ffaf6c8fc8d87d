-- Something a user should know about a task instance that its state does not say, such as an
-- attempt that ran past its timeout under timeout_strategy warn.
ALTER TABLE task_instance ADD COLUMN warning TEXT;
