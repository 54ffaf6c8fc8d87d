DROP TABLE dead_letter;
DROP TABLE task_instance;
DROP TABLE workflow_instance;
DROP TABLE command;
DROP TABLE workflow_definition;
