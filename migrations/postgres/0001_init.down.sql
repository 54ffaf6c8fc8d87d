DROP TABLE dead_letter;
DROP TABLE task_instance;
DROP TABLE workflow_instance;
DROP TRIGGER command_notify ON command;
DROP FUNCTION porpoise_notify_command();
DROP TABLE command;
DROP TABLE workflow_definition;
