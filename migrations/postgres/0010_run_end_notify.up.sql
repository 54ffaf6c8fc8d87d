-- masters LISTEN on this channel to answer WaitRun as soon as a run ends, whichever master ran it
CREATE FUNCTION porpoise_notify_run_end() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('porpoise_run_end', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER workflow_instance_end_notify AFTER UPDATE OF state ON workflow_instance
    FOR EACH ROW
    WHEN (NEW.state IN ('success', 'failure', 'stopped', 'killed', 'forced-success', 'discarded')
          AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION porpoise_notify_run_end();
