-- Recurring jobs: a cron expression in a time zone, turned into tasks a short horizon
-- ahead by the schedulers. Each occurrence is one task by a unique key, not by luck.

CREATE TABLE jobs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                text UNIQUE,
    command             text NOT NULL,
    cron                text NOT NULL,
    timezone            text NOT NULL DEFAULT 'UTC',
    delivery            text NOT NULL DEFAULT 'at_most_once'
                        CHECK (delivery IN ('at_most_once', 'at_least_once')),
    max_attempts        integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    timeout_s           double precision CHECK (timeout_s > 0),
    env                 jsonb NOT NULL DEFAULT '{}',
    concurrency_policy  text NOT NULL DEFAULT 'allow'
                        CHECK (concurrency_policy IN ('allow', 'forbid', 'replace')),
    misfire_policy      text NOT NULL DEFAULT 'run_once'
                        CHECK (misfire_policy IN ('run_once', 'skip', 'run_all')),
    starting_deadline_s double precision CHECK (starting_deadline_s > 0),
    max_catchup         integer NOT NULL DEFAULT 100 CHECK (max_catchup >= 1),
    paused_at           timestamptz,
    -- The next occurrence not yet turned into a task.
    next_run_at         timestamptz NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    idempotency_key     text UNIQUE,
    request_hash        text
);

CREATE INDEX jobs_to_materialize ON jobs (next_run_at) WHERE paused_at IS NULL;

-- A job's occurrence is one task: racing schedulers insert it ON CONFLICT DO NOTHING.
ALTER TABLE tasks ADD CONSTRAINT tasks_job_occurrence UNIQUE (job_id, scheduled_at);
-- Copied from the job when the task is made, so the claim can honour "forbid".
ALTER TABLE tasks ADD COLUMN concurrency_policy text;
-- A job's tasks still in flight (picked or running): what its concurrency policy asks.
CREATE INDEX tasks_job_in_flight ON tasks (job_id)
    WHERE job_id IS NOT NULL AND picked_at IS NOT NULL
      AND completed_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;
