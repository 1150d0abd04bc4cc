-- Where a task runs: workers advertise labels, a task or job may carry a target (the
-- labels its worker must have). See chronocore.labels.
ALTER TABLE nodes ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN target jsonb;
ALTER TABLE tasks ADD COLUMN target jsonb;
-- A due targeted task that no live worker matches is set aside (by the coordinators'
-- sweep) until one does: the claim reads only what is not set aside, so thousands of
-- such tasks cost it nothing, round after round.
ALTER TABLE tasks ADD COLUMN unmatched_at timestamptz;
CREATE INDEX tasks_claimable ON tasks (due_at, id)
    WHERE picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL AND unmatched_at IS NULL;
-- What the sweep reads: waiting targeted tasks not set aside, and those set aside.
CREATE INDEX tasks_targeted ON tasks (due_at)
    WHERE target IS NOT NULL AND unmatched_at IS NULL AND picked_at IS NULL
      AND cancelled_at IS NULL AND completed_at IS NULL AND failed_at IS NULL;
CREATE INDEX tasks_unmatched ON tasks (id)
    WHERE unmatched_at IS NOT NULL AND picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL;

-- A task set aside and brought back wakes the coordinators like a new one.
CREATE OR REPLACE TRIGGER tasks_due_notify
    AFTER INSERT OR UPDATE OF picked_at, due_at, unmatched_at ON tasks
    FOR EACH ROW WHEN (NEW.picked_at IS NULL AND NEW.cancelled_at IS NULL
                       AND NEW.completed_at IS NULL AND NEW.failed_at IS NULL
                       AND NEW.unmatched_at IS NULL)
    EXECUTE FUNCTION notify_task_due();

-- "all": one task per live matching worker, each pinned to its worker and grouped by a
-- broadcast id; a job's occurrence may so be several tasks, one per worker.
ALTER TABLE tasks ADD COLUMN pinned_worker text;
ALTER TABLE tasks ADD COLUMN broadcast_id uuid;
CREATE INDEX tasks_broadcast ON tasks (broadcast_id) WHERE broadcast_id IS NOT NULL;
CREATE INDEX tasks_pinned ON tasks (pinned_worker)
    WHERE pinned_worker IS NOT NULL AND picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL;
ALTER TABLE tasks DROP CONSTRAINT tasks_job_occurrence;
CREATE UNIQUE INDEX tasks_job_occurrence
    ON tasks (job_id, scheduled_at, (coalesce(pinned_worker, '')));
