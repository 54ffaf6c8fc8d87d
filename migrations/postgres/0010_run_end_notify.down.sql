DROP TRIGGER workflow_instance_end_notify ON workflow_instance;
DROP FUNCTION porpoise_notify_run_end();
