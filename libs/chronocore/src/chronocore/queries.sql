-- Every SQL statement ChronoSync runs at run time, each under a "-- name: NAME --" header
-- and a one-line description. Loaded once into a dict by chronocore.queries.
-- "Waiting" below means: not picked, not cancelled, not finished.

-- name: insert_task --
-- Store one submission; an idempotency key already used inserts nothing.
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts, timeout_s, env, name,
                   idempotency_key, request_hash, job_id)
VALUES (%(command)s, coalesce(%(scheduled_at)s::timestamptz, now()), %(delivery)s, %(max_attempts)s, %(timeout_s)s,
        %(env)s, %(name)s, %(idempotency_key)s, %(request_hash)s, %(job_id)s)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id;

-- name: task_by_idempotency_key --
-- The task an idempotency key already names, with the hash of the request that made it.
SELECT id, request_hash FROM tasks WHERE idempotency_key = %(key)s;

-- name: get_task --
-- One task with its derived status.
SELECT t.*, task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                        t.cancelled_at) AS status
FROM tasks t
WHERE t.id = %(id)s;

-- name: task_attempts --
-- The attempt history of one task, oldest first.
SELECT attempt, worker_id, started_at, finished_at, exit_code, error
FROM task_attempts
WHERE task_id = %(id)s
ORDER BY attempt;

-- name: list_tasks --
-- Tasks newest first, optionally by status and job, paged by id.
SELECT t.*, task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                        t.cancelled_at) AS status
FROM tasks t
WHERE (%(status)s::text IS NULL
       OR task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                      t.cancelled_at) = %(status)s::text)
  AND (%(job_id)s::bigint IS NULL OR t.job_id = %(job_id)s::bigint)
  AND (%(before)s::bigint IS NULL OR t.id < %(before)s::bigint)
ORDER BY t.id DESC
LIMIT %(limit)s;

-- name: cancel_task --
-- Mark a task cancelled unless it has finished; says where it runs, if it does.
UPDATE tasks
SET cancelled_at = now()
WHERE id = %(id)s AND cancelled_at IS NULL
  AND completed_at IS NULL AND failed_at IS NULL
RETURNING id, started_at, worker_id;

-- name: claim_due --
-- Claim up to LIMIT due tasks for one coordinator, each with a fresh fencing token.
WITH due AS (
    SELECT id FROM tasks
    WHERE picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL
      AND due_at <= now()
    ORDER BY due_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET picked_at = now(), claim_token = gen_random_uuid(), claimed_by = %(coordinator_id)s
FROM due
WHERE t.id = due.id
RETURNING t.id, t.command, t.claim_token, t.attempt, t.timeout_s, t.env, t.scheduled_at;

-- name: next_due_in --
-- Seconds from now (database clock) until the earliest waiting task is due; NULL if none.
SELECT EXTRACT(EPOCH FROM min(due_at) - now())::float8 AS seconds
FROM tasks
WHERE picked_at IS NULL AND cancelled_at IS NULL
  AND completed_at IS NULL AND failed_at IS NULL;

-- name: release_claims --
-- Hand claimed, unstarted tasks back to the queue (no worker took them); fenced by token.
UPDATE tasks t
SET picked_at = NULL, claim_token = NULL, claimed_by = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
WHERE t.id = r.id AND t.claim_token = r.token AND t.started_at IS NULL;

-- name: mark_started --
-- Record the start of an attempt, fenced by token; committed before the process is spawned.
WITH started AS (
    UPDATE tasks
    SET started_at = now(), attempt = attempt + 1, worker_id = %(worker_id)s
    WHERE id = %(id)s AND claim_token = %(token)s
      AND started_at IS NULL AND cancelled_at IS NULL
    RETURNING id, attempt, started_at, worker_id, scheduled_at
), attempt AS (
    INSERT INTO task_attempts (task_id, attempt, worker_id, started_at)
    SELECT id, attempt, worker_id, started_at FROM started
)
SELECT attempt, scheduled_at FROM started;

-- name: mark_finished --
-- Record how an attempt ended, fenced by token; a failed at_least_once attempt with
-- attempts left goes back to the queue after an exponential backoff instead.
WITH current AS (
    SELECT id, attempt,
           (NOT %(succeeded)s AND delivery = 'at_least_once' AND attempt < max_attempts
            AND cancelled_at IS NULL) AS retry
    FROM tasks
    WHERE id = %(id)s AND claim_token = %(token)s AND started_at IS NOT NULL
      AND completed_at IS NULL AND failed_at IS NULL
    FOR UPDATE
), finished AS (
    UPDATE tasks t
    SET completed_at = CASE WHEN %(succeeded)s THEN now() END,
        failed_at = CASE WHEN NOT %(succeeded)s AND NOT c.retry THEN now() END,
        picked_at = CASE WHEN c.retry THEN NULL ELSE t.picked_at END,
        started_at = CASE WHEN c.retry THEN NULL ELSE t.started_at END,
        claim_token = CASE WHEN c.retry THEN NULL ELSE t.claim_token END,
        due_at = CASE WHEN c.retry
                      THEN now() + least(%(backoff_base_s)s * 2 ^ (c.attempt - 1),
                                         %(backoff_max_s)s) * interval '1 second'
                      ELSE t.due_at END,
        exit_code = %(exit_code)s, error = %(error)s, output = %(output)s
    FROM current c
    WHERE t.id = c.id
    RETURNING t.id
)
UPDATE task_attempts a
SET finished_at = now(), exit_code = %(exit_code)s, error = %(error)s
FROM current c
WHERE a.task_id = c.id AND a.attempt = c.attempt
RETURNING a.task_id;

-- name: revoked_among --
-- Which of a worker's running attempts must stop: cancelled, or no longer held under the
-- worker's token (recovered while the worker was paused or cut off).
SELECT t.id, t.cancelled_at IS NOT NULL AS cancelled
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
JOIN tasks t ON t.id = r.id
WHERE t.cancelled_at IS NOT NULL OR t.claim_token IS DISTINCT FROM r.token
   OR t.failed_at IS NOT NULL;

-- name: requeue_stale_claims --
-- Recovery: claims never started within the lease go back to the queue (their holder
-- died or lost them); the fencing token makes a late start by the old holder fail.
UPDATE tasks
SET picked_at = NULL, claim_token = NULL, claimed_by = NULL
WHERE picked_at IS NOT NULL AND started_at IS NULL AND cancelled_at IS NULL
  AND completed_at IS NULL AND failed_at IS NULL
  AND picked_at < now() - %(lease_s)s * interval '1 second'
RETURNING id;

-- name: recover_lost_runs --
-- Recovery: tasks started on a worker now dead. at_most_once (or out of attempts): failed
-- as worker_lost; at_least_once with attempts left: back to the queue after a backoff.
WITH lost AS (
    SELECT t.id, t.attempt,
           (t.delivery = 'at_least_once' AND t.attempt < t.max_attempts
            AND t.cancelled_at IS NULL) AS retry
    FROM tasks t
    LEFT JOIN nodes n ON n.id = t.worker_id
    WHERE t.started_at IS NOT NULL AND t.completed_at IS NULL AND t.failed_at IS NULL
      AND (n.id IS NULL OR n.stopped_at IS NOT NULL
           OR n.last_heartbeat_at < now() - %(ttl_s)s * interval '1 second')
    FOR UPDATE OF t SKIP LOCKED
), recovered AS (
    UPDATE tasks t
    SET failed_at = CASE WHEN l.retry THEN NULL ELSE now() END,
        picked_at = CASE WHEN l.retry THEN NULL ELSE t.picked_at END,
        started_at = CASE WHEN l.retry THEN NULL ELSE t.started_at END,
        claim_token = CASE WHEN l.retry THEN NULL ELSE t.claim_token END,
        due_at = CASE WHEN l.retry
                      THEN now() + least(%(backoff_base_s)s * 2 ^ (l.attempt - 1),
                                         %(backoff_max_s)s) * interval '1 second'
                      ELSE t.due_at END,
        error = 'worker_lost', exit_code = NULL
    FROM lost l
    WHERE t.id = l.id
    RETURNING t.id
)
UPDATE task_attempts a
SET finished_at = now(), error = 'worker_lost'
FROM lost l
WHERE a.task_id = l.id AND a.attempt = l.attempt
RETURNING a.task_id, l.retry;

-- name: register_node --
-- Announce a node (or announce it again after its row was lost).
INSERT INTO nodes (id, kind, host, pid, address, capacity)
VALUES (%(id)s, %(kind)s, %(host)s, %(pid)s, %(address)s, %(capacity)s)
ON CONFLICT (id) DO UPDATE
SET last_heartbeat_at = now(), address = EXCLUDED.address, capacity = EXCLUDED.capacity,
    stopped_at = NULL;

-- name: heartbeat --
-- A node is still alive; workers also say how many commands they run.
UPDATE nodes
SET last_heartbeat_at = now(), running = %(running)s
WHERE id = %(id)s AND stopped_at IS NULL
RETURNING id;

-- name: mark_node_draining --
-- A node takes no new work from now on (graceful shutdown).
UPDATE nodes SET draining_at = now() WHERE id = %(id)s;

-- name: mark_node_stopped --
-- A node left cleanly.
UPDATE nodes SET stopped_at = now() WHERE id = %(id)s;

-- name: live_workers --
-- Workers that heartbeat within the TTL and take work, least loaded first.
SELECT id, address, capacity, running
FROM nodes
WHERE kind = 'worker' AND stopped_at IS NULL AND draining_at IS NULL
  AND last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
ORDER BY capacity - running DESC, id;

-- name: worker_address --
-- Where a worker listens.
SELECT address FROM nodes WHERE id = %(id)s AND kind = 'worker';

-- name: list_nodes --
-- Every node that was alive within the last hour, with its state by the database clock.
SELECT id, kind, host, pid, address, capacity, running, started_at, last_heartbeat_at,
       CASE WHEN stopped_at IS NOT NULL
                 OR last_heartbeat_at < now() - %(ttl_s)s * interval '1 second' THEN 'dead'
            WHEN draining_at IS NOT NULL THEN 'draining'
            ELSE 'alive' END AS state
FROM nodes
WHERE last_heartbeat_at >= now() - interval '1 hour'
ORDER BY kind, started_at, id;

-- name: task_status_of --
-- The status the database derives for a set of timestamps (used to test the derivation).
SELECT task_status(%(picked_at)s, %(started_at)s, %(completed_at)s, %(failed_at)s,
                   %(cancelled_at)s) AS status;
