-- The materializer inserts thousands of tasks in one statement: one NOTIFY for the
-- statement, not a trigger call per row (a coordinator's claim loop only needs to wake
-- once). Updates (a task claimed back, a retry's new due_at, one brought back from
-- aside) still notify per row, as before.
CREATE FUNCTION notify_tasks_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM added
               WHERE picked_at IS NULL AND cancelled_at IS NULL AND completed_at IS NULL
                 AND failed_at IS NULL AND unmatched_at IS NULL) THEN
        PERFORM pg_notify('chronosync_due', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER tasks_due_notify
    AFTER UPDATE OF picked_at, due_at, unmatched_at ON tasks
    FOR EACH ROW WHEN (NEW.picked_at IS NULL AND NEW.cancelled_at IS NULL
                       AND NEW.completed_at IS NULL AND NEW.failed_at IS NULL
                       AND NEW.unmatched_at IS NULL)
    EXECUTE FUNCTION notify_task_due();

CREATE TRIGGER tasks_added_notify
    AFTER INSERT ON tasks REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION notify_tasks_added();

-- An insert that gives due_at itself (the materializer's) skips the trigger's call.
CREATE OR REPLACE TRIGGER tasks_set_due_at
    BEFORE INSERT ON tasks
    FOR EACH ROW WHEN (NEW.due_at IS NULL) EXECUTE FUNCTION set_task_due_at();

-- Each materialization step writes a job twice: the lease (no indexed column: a HOT
-- update when its page has room) and the advance. Room on the page keeps both there.
-- (Pages already written keep their fill until rewritten.)
ALTER TABLE jobs SET (fillfactor = 50);

-- Idempotency keys are unique where given: most tasks and jobs have none, and a full
-- unique index still takes an entry for each (every task made, every job's advance,
-- which moves the indexed next_run_at and so writes every index of jobs).
ALTER TABLE tasks DROP CONSTRAINT tasks_idempotency_key_key;
CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
ALTER TABLE jobs DROP CONSTRAINT jobs_idempotency_key_key;
CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
