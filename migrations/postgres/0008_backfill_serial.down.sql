DROP INDEX workflow_instance_waiting;
ALTER TABLE workflow_instance DROP COLUMN execution;
ALTER TABLE workflow_instance DROP COLUMN backfill_seq;
ALTER TABLE workflow_instance DROP COLUMN backfill_id;
DROP TABLE backfill;
UPDATE workflow_instance SET state = 'stopped' WHERE state = 'discarded';
ALTER TABLE workflow_instance DROP CONSTRAINT workflow_instance_state_check;
ALTER TABLE workflow_instance ADD CONSTRAINT workflow_instance_state_check CHECK (state IN ('submitted', 'dispatched',
    'running', 'success', 'failure', 'stopped', 'paused', 'need-fault-tolerance', 'delayed', 'waiting'));
