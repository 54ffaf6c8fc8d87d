-- Leaves the rebuilt workflow_instance (its CHECK still allows 'discarded'), without the new columns.
DROP INDEX workflow_instance_waiting;
ALTER TABLE workflow_instance DROP COLUMN execution;
ALTER TABLE workflow_instance DROP COLUMN backfill_seq;
ALTER TABLE workflow_instance DROP COLUMN backfill_id;
DROP TABLE backfill;
UPDATE workflow_instance SET state = 'stopped' WHERE state = 'discarded';
