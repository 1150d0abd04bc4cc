-- What an idle cluster reads must follow its live work, never its history: every
-- statement run periodically finds its rows through an index on unfinished tasks only.

-- A job's tasks not yet finished (waiting, picked or running), by occurrence: what the
-- concurrency policies ask of one job ("an earlier occurrence still waits", "one is in
-- flight", "a later one is due"), read without touching the job's finished history.
CREATE INDEX tasks_job_unfinished ON tasks (job_id, scheduled_at)
    WHERE job_id IS NOT NULL AND completed_at IS NULL AND failed_at IS NULL
      AND cancelled_at IS NULL;

-- concurrency_policy forbid: is this occurrence held back, by another occurrence of its
-- job in flight or by an earlier one still waiting (that one goes first)? One definition
-- for the claim and for the claim loop's sleep (next_due_in), so that the loop never
-- waits for a task the claim refuses, nor spins on one.
CREATE FUNCTION forbid_holds_back(job bigint, task bigint, occurrence timestamptz)
RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT 1 FROM tasks r
        WHERE r.job_id = job AND r.id <> task
          AND r.completed_at IS NULL AND r.failed_at IS NULL AND r.cancelled_at IS NULL
          AND (r.picked_at IS NOT NULL OR r.scheduled_at < occurrence))
$$;

-- An occurrence held back by forbid becomes claimable when the one ahead of it ends:
-- wake the sleeping coordinators then, as for any task that becomes claimable.
CREATE TRIGGER tasks_forbid_released_notify
    AFTER UPDATE OF completed_at, failed_at, cancelled_at ON tasks
    FOR EACH ROW WHEN (NEW.concurrency_policy = 'forbid'
                       AND OLD.completed_at IS NULL AND OLD.failed_at IS NULL
                       AND OLD.cancelled_at IS NULL
                       AND (NEW.completed_at IS NOT NULL OR NEW.failed_at IS NOT NULL
                            OR NEW.cancelled_at IS NOT NULL))
    EXECUTE FUNCTION notify_task_due();
