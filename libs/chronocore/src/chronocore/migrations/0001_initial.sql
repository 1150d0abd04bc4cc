-- The first schema: tasks with their timestamp history, attempts, and the node registry.

CREATE TABLE nodes (
    id                text PRIMARY KEY,
    kind              text NOT NULL CHECK (kind IN ('scheduler', 'coordinator', 'worker')),
    host              text NOT NULL,
    pid               integer NOT NULL,
    address           text,
    capacity          integer,
    running           integer NOT NULL DEFAULT 0,
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    draining_at       timestamptz,
    stopped_at        timestamptz
);

CREATE INDEX nodes_heartbeat ON nodes (last_heartbeat_at);

CREATE TABLE tasks (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    command         text NOT NULL,
    -- When the task was asked to run: never changes.
    scheduled_at    timestamptz NOT NULL,
    -- When it may next be claimed: scheduled_at at first, later after a retry's backoff.
    due_at          timestamptz NOT NULL,
    picked_at       timestamptz,
    started_at      timestamptz,
    completed_at    timestamptz,
    failed_at       timestamptz,
    cancelled_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivery        text NOT NULL DEFAULT 'at_most_once'
                    CHECK (delivery IN ('at_most_once', 'at_least_once')),
    attempt         integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    timeout_s       double precision CHECK (timeout_s > 0),
    env             jsonb NOT NULL DEFAULT '{}',
    name            text,
    -- Fencing: a new token at every claim; every later write about the task must present it.
    claim_token     uuid,
    claimed_by      text,
    worker_id       text,
    exit_code       integer,
    error           text,
    output          text,
    job_id          bigint,
    idempotency_key text UNIQUE,
    request_hash    text
);

-- What the claim reads: only tasks still waiting, so its cost does not grow with history.
CREATE INDEX tasks_due ON tasks (due_at, id)
    WHERE picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL;
-- What recovery reads: tasks held by some node and not finished.
CREATE INDEX tasks_in_flight ON tasks (picked_at)
    WHERE picked_at IS NOT NULL AND completed_at IS NULL AND failed_at IS NULL;
CREATE INDEX tasks_job ON tasks (job_id, id) WHERE job_id IS NOT NULL;

CREATE TABLE task_attempts (
    task_id     bigint NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    worker_id   text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    exit_code   integer,
    error       text,
    PRIMARY KEY (task_id, attempt)
);

-- The one place a task's status is derived from its timestamps.
CREATE FUNCTION task_status(picked_at timestamptz, started_at timestamptz,
                            completed_at timestamptz, failed_at timestamptz,
                            cancelled_at timestamptz)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN completed_at IS NOT NULL THEN 'succeeded'
        WHEN cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN failed_at IS NOT NULL THEN 'failed'
        WHEN started_at IS NOT NULL THEN 'running'
        WHEN picked_at IS NOT NULL THEN 'picked'
        ELSE 'scheduled'
    END
$$;

-- When a failed attempt may run again: exponential backoff from base_s, capped at max_s.
CREATE FUNCTION retry_due_at(attempt integer, base_s double precision,
                             max_s double precision)
RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT now() + least(base_s * 2 ^ (attempt - 1), max_s) * interval '1 second'
$$;

-- A new task is first due when it is scheduled.
CREATE FUNCTION set_task_due_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.due_at := coalesce(NEW.due_at, NEW.scheduled_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_set_due_at BEFORE INSERT ON tasks
    FOR EACH ROW EXECUTE FUNCTION set_task_due_at();

-- Wakes sleeping coordinators whenever a task becomes claimable (new, requeued, retried).
-- Identical notifications in one transaction fold into one, so a bulk insert sends one.
CREATE FUNCTION notify_task_due() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('chronosync_due', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_due_notify
    AFTER INSERT OR UPDATE OF picked_at, due_at ON tasks
    FOR EACH ROW WHEN (NEW.picked_at IS NULL AND NEW.cancelled_at IS NULL
                       AND NEW.completed_at IS NULL AND NEW.failed_at IS NULL)
    EXECUTE FUNCTION notify_task_due();
