DROP INDEX task_instance_group;
ALTER TABLE task_instance DROP COLUMN group_waiting_since;
ALTER TABLE task_instance DROP COLUMN task_group_priority;
ALTER TABLE task_instance DROP COLUMN task_group;
DROP TABLE task_group;
UPDATE task_instance SET state = 'stopped' WHERE state = 'killed';
UPDATE task_instance SET state = 'success' WHERE state = 'forced-success';
ALTER TABLE task_instance DROP CONSTRAINT task_instance_state_check;
ALTER TABLE task_instance ADD CONSTRAINT task_instance_state_check CHECK (state IN ('submitted', 'dispatched',
    'running', 'success', 'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting'));
