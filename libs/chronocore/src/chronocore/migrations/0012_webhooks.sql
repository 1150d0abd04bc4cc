-- Webhooks: a task or job may name HTTP endpoints to be told of its events (see
-- chronocore.webhooks). Each element of the array is {"url", "events", "secret"}; a job's
-- are copied to every task it makes, as its command is.
ALTER TABLE tasks ADD COLUMN webhooks jsonb;
ALTER TABLE jobs ADD COLUMN webhooks jsonb;

-- One row per (event, webhook) to deliver: written by the triggers below in the same
-- transaction as the event itself, whichever statement records it, so no event is lost
-- to a node dying between recording it and telling anyone. Coordinators deliver them
-- (claim with SKIP LOCKED under a lease; an expired lease lets another one retry).
CREATE TABLE webhook_deliveries (
    id bigserial PRIMARY KEY,
    task_id bigint REFERENCES tasks (id) ON DELETE CASCADE,
    job_id bigint,  -- a job's misfire (no task) or the task's job
    event text NOT NULL,  -- failed, succeeded, missed, recovered
    url text NOT NULL,
    secret text NOT NULL,
    -- What is posted: the task (or job) as it was when the event happened.
    payload jsonb NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    due_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,  -- made so far, counted when each is claimed
    last_attempt_at timestamptz,
    last_status integer,  -- the HTTP status of the last attempt, if it got an answer
    last_error text,
    -- Each attempt that ended: {attempt, started_at, finished_at, status, error, by}. One
    -- whose deliverer died mid-request has no entry (it still counts in attempts).
    history jsonb NOT NULL DEFAULT '[]',
    delivered_at timestamptz,
    gave_up_at timestamptz,
    leased_by text,
    leased_until timestamptz
);
-- What the deliverers read: the pending ones only, whatever the history.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (due_at)
    WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX webhook_deliveries_given_up ON webhook_deliveries (id)
    WHERE gave_up_at IS NOT NULL;
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id);
CREATE INDEX webhook_deliveries_job ON webhook_deliveries (job_id) WHERE task_id IS NULL;

-- The events of a task's update, by its timestamps (the status is derived from them):
--   succeeded: completed_at set;
--   failed: failed_at set, not cancelled (a cancelled run that ends is a cancel);
--   missed: skipped by concurrency_policy forbid (a pause or a delete skips ticks too,
--           as the user asked: not told);
--   recovered: an attempt taken back from a dead worker (error 'worker_lost'), retried
--              (started_at cleared) or failed (failed_at set).
CREATE FUNCTION task_webhook_events(o tasks, n tasks) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT array_remove(ARRAY[
        CASE WHEN o.completed_at IS NULL AND n.completed_at IS NOT NULL
             THEN 'succeeded' END,
        CASE WHEN o.failed_at IS NULL AND n.failed_at IS NOT NULL AND n.cancelled_at IS NULL
                  AND n.completed_at IS NULL
             THEN 'failed' END,
        CASE WHEN o.cancelled_at IS NULL AND n.cancelled_at IS NOT NULL
                  AND n.error = 'skipped: concurrency_policy forbid'
             THEN 'missed' END,
        CASE WHEN n.error = 'worker_lost'
                  AND ((o.failed_at IS NULL AND n.failed_at IS NOT NULL)
                       OR (o.started_at IS NOT NULL AND n.started_at IS NULL))
             THEN 'recovered' END], NULL)
$$;

-- The task as a webhook shows it: its columns less what is internal or secret (its env
-- too: values may be credentials, and the receiver is outside the cluster), with its
-- derived status.
CREATE FUNCTION task_webhook_payload(t tasks) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT (to_jsonb(t) - 'webhooks' - 'env' - 'claim_token' - 'claimed_by'
            - 'request_hash' - 'unmatched_at')
           || jsonb_build_object('status', task_status(t.picked_at, t.started_at,
                                                       t.completed_at, t.failed_at,
                                                       t.cancelled_at, t.attempt))
$$;

CREATE FUNCTION enqueue_task_webhooks() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO webhook_deliveries (task_id, job_id, event, url, secret, payload)
    SELECT NEW.id, NEW.job_id, e.event, h.hook->>'url', h.hook->>'secret',
           task_webhook_payload(NEW)
    FROM unnest(task_webhook_events(OLD, NEW)) AS e(event)
    JOIN jsonb_array_elements(NEW.webhooks) AS h(hook) ON h.hook->'events' ? e.event;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_webhooks
    AFTER UPDATE OF completed_at, failed_at, cancelled_at, started_at ON tasks
    FOR EACH ROW WHEN (NEW.webhooks IS NOT NULL)
    EXECUTE FUNCTION enqueue_task_webhooks();

-- A job's misfire: occurrences that no task was made for (every scheduler was down and
-- the misfire policy dropped them). Told as "missed" with the job and how many.
CREATE FUNCTION enqueue_job_webhooks() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO webhook_deliveries (job_id, event, url, secret, payload)
    SELECT NEW.id, 'missed', h.hook->>'url', h.hook->>'secret',
           jsonb_build_object(
               'job', jsonb_build_object('id', NEW.id, 'name', NEW.name,
                                         'command', NEW.command, 'cron', NEW.cron,
                                         'timezone', NEW.timezone),
               'missed_occurrences', NEW.missed_occurrences - OLD.missed_occurrences,
               'next_run_at', NEW.next_run_at)
    FROM jsonb_array_elements(NEW.webhooks) AS h(hook)
    WHERE h.hook->'events' ? 'missed';
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_webhooks
    AFTER UPDATE OF missed_occurrences ON jobs
    FOR EACH ROW WHEN (NEW.webhooks IS NOT NULL
                       AND NEW.missed_occurrences > OLD.missed_occurrences)
    EXECUTE FUNCTION enqueue_job_webhooks();
