ALTER TABLE workflow_instance DROP COLUMN run_kind;
ALTER TABLE workflow_instance DROP COLUMN timezone;
ALTER TABLE workflow_instance DROP COLUMN schedule_time;
DROP TABLE scheduler_clock;
DROP TABLE schedule_fire;
DROP TABLE schedule;
