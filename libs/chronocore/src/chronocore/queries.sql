-- Every SQL statement ChronoSync runs at run time, each under a "-- name: NAME --" header
-- and a one-line description. Loaded once into a dict by chronocore.queries.
-- "Waiting" below means: not picked, not cancelled, not finished.

-- name: insert_task --
-- Store one submission; an idempotency key already used inserts nothing.
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts, timeout_s, env, name,
                   idempotency_key, request_hash, job_id, target, webhooks)
VALUES (%(command)s, coalesce(%(scheduled_at)s::timestamptz, now()), %(delivery)s, %(max_attempts)s, %(timeout_s)s,
        %(env)s, %(name)s, %(idempotency_key)s, %(request_hash)s, %(job_id)s, %(target)s,
        %(webhooks)s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: insert_broadcast --
-- "all": one task per live worker with the target's labels, each pinned to it, grouped
-- by a broadcast id; with none live, one unpinned task that waits for the first.
WITH workers AS (
    SELECT n.id FROM nodes n
    WHERE n.kind = 'worker' AND n.stopped_at IS NULL AND n.draining_at IS NULL
      AND n.last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
      AND n.labels @> (%(target)s::jsonb->'labels')
), pins AS (
    SELECT id FROM workers
    UNION ALL
    SELECT NULL WHERE NOT EXISTS (SELECT 1 FROM workers)
)
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts, timeout_s, env, name,
                   idempotency_key, request_hash, target, pinned_worker, broadcast_id,
                   webhooks)
SELECT %(command)s, coalesce(%(scheduled_at)s::timestamptz, now()), %(delivery)s,
       %(max_attempts)s, %(timeout_s)s, %(env)s, %(name)s,
       -- the key names the group's first task (the one a replay returns)
       CASE WHEN row_number() OVER (ORDER BY p.id) = 1 THEN %(idempotency_key)s END,
       %(request_hash)s, %(target)s, p.id, %(broadcast_id)s, %(webhooks)s
FROM pins p
ORDER BY p.id
RETURNING id;

-- name: lock_idempotency_key --
-- Serializes submissions naming one idempotency key (a broadcast inserts several rows).
SELECT pg_advisory_xact_lock(hashtextextended(%(key)s, 0));

-- name: broadcast_tasks --
-- The tasks of one broadcast, by id.
SELECT id FROM tasks WHERE broadcast_id = %(id)s ORDER BY id;

-- name: task_by_idempotency_key --
-- The task an idempotency key already names, with the hash of the request that made it.
SELECT id, request_hash FROM tasks WHERE idempotency_key = %(key)s;

-- name: get_task --
-- One task with its derived status.
SELECT t.*, task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                        t.cancelled_at, t.attempt) AS status
FROM tasks t
WHERE t.id = %(id)s;

-- name: task_attempts --
-- The attempt history of one task, oldest first.
SELECT attempt, worker_id, started_at, finished_at, exit_code, error
FROM task_attempts
WHERE task_id = %(id)s
ORDER BY attempt;

-- name: list_tasks --
-- Tasks newest first, optionally by status, job, worker and text in the command (a
-- case-insensitive substring: its LIKE wildcards and escape are escaped here, so they
-- match themselves), paged by id; with only the end of their output (up to 64 KiB each:
-- a page of 1,000 would be 64 MiB), which GET /tasks/{id} gives whole. A worker's tasks
-- are found by their own index (tasks_worker).
SELECT t.id, t.command, t.scheduled_at, t.due_at, t.picked_at, t.started_at,
       t.completed_at, t.failed_at, t.cancelled_at, t.created_at, t.delivery, t.attempt,
       t.max_attempts, t.timeout_s, t.exit_code, t.error, t.worker_id, t.job_id,
       t.idempotency_key, t.name, t.env, t.target, t.pinned_worker, t.broadcast_id,
       t.retry_of, t.webhooks,
       right(t.output, %(output_chars)s) AS output,
       coalesce(length(t.output) > %(output_chars)s, false) AS output_truncated,
       task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                   t.cancelled_at, t.attempt) AS status
FROM tasks t
WHERE (%(status)s::text IS NULL
       OR task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                      t.cancelled_at, t.attempt) = %(status)s::text)
  AND (%(job_id)s::bigint IS NULL OR t.job_id = %(job_id)s::bigint)
  AND (%(worker)s::text IS NULL OR t.worker_id = %(worker)s::text)
  AND (%(text)s::text IS NULL
       OR t.command ILIKE '%%' || replace(replace(replace(%(text)s::text, '\', '\\'),
                                                  '%%', '\%%'), '_', '\_') || '%%')
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
      -- concurrency_policy forbid: not while another occurrence of the job is in flight
      -- or an earlier one still waits (it goes first; this one is then skipped)
      AND (concurrency_policy IS DISTINCT FROM 'forbid'
           OR NOT forbid_holds_back(job_id, id, scheduled_at))
      -- a target: only while a worker with free slots (as this coordinator sees them)
      -- has its labels; one no live worker matches is set aside, never read here
      AND unmatched_at IS NULL AND (target IS NULL OR EXISTS (
          SELECT 1 FROM jsonb_array_elements(%(free_workers)s::jsonb) AS w(worker)
          WHERE w.worker->'labels' @> (tasks.target->'labels')
            AND (tasks.pinned_worker IS NULL OR tasks.pinned_worker = w.worker->>'id')))
    ORDER BY due_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET picked_at = now(), claim_token = gen_random_uuid(), claimed_by = %(coordinator_id)s
FROM due
WHERE t.id = due.id
RETURNING t.id, t.command, t.claim_token, t.attempt, t.timeout_s, t.env, t.scheduled_at,
          t.target, t.pinned_worker;

-- name: next_due_in --
-- Seconds from now (database clock) until the earliest waiting task the claim would take
-- is due (no row if none): the same predicate as claim_due, so a due task the claim
-- refuses (held back by forbid) never makes the claim loop spin. Such a task becomes
-- claimable only when the task ahead of it ends, which notifies (migration 0006).
SELECT EXTRACT(EPOCH FROM due_at - now())::float8 AS seconds
FROM tasks
WHERE picked_at IS NULL AND cancelled_at IS NULL
  AND completed_at IS NULL AND failed_at IS NULL
  AND (concurrency_policy IS DISTINCT FROM 'forbid'
       OR NOT forbid_holds_back(job_id, id, scheduled_at))
  -- targeted: as in claim_due (a task only a busy worker matches waits for a freed slot,
  -- which wakes the loop)
  AND unmatched_at IS NULL AND (target IS NULL OR EXISTS (
      SELECT 1 FROM jsonb_array_elements(%(free_workers)s::jsonb) AS w(worker)
      WHERE w.worker->'labels' @> (tasks.target->'labels')
        AND (tasks.pinned_worker IS NULL OR tasks.pinned_worker = w.worker->>'id')))
ORDER BY due_at, id
LIMIT 1;

-- name: sort_targeted --
-- The sweep's one statement about targeted tasks: those set aside that a live worker now
-- matches come back; due ones no live worker matches are set aside (out of the claim's
-- index); and, once the sweeper may judge the dead (JUDGE_DEAD), a broadcast's task not
-- started whose worker died fails as worker_lost (it runs on no other worker). A row a
-- claim in flight holds is left for the next sweep.
WITH live AS (
    SELECT id, labels FROM nodes
    WHERE kind = 'worker' AND stopped_at IS NULL AND draining_at IS NULL
      AND last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
), orphaned AS (
    SELECT id FROM tasks t
    WHERE %(judge_dead)s AND pinned_worker IS NOT NULL AND picked_at IS NULL
      AND cancelled_at IS NULL AND completed_at IS NULL AND failed_at IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM nodes n
          WHERE n.id = t.pinned_worker AND n.stopped_at IS NULL
            AND n.last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second')
    FOR UPDATE SKIP LOCKED
), back AS (
    SELECT id FROM tasks t
    WHERE unmatched_at IS NOT NULL AND picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL
      AND EXISTS (SELECT 1 FROM live n WHERE n.labels @> (t.target->'labels'))
    FOR UPDATE SKIP LOCKED
), aside AS (
    SELECT id FROM tasks t
    WHERE target IS NOT NULL AND unmatched_at IS NULL AND due_at <= now()
      AND picked_at IS NULL AND cancelled_at IS NULL
      AND completed_at IS NULL AND failed_at IS NULL
      AND NOT EXISTS (SELECT 1 FROM live n WHERE n.labels @> (t.target->'labels'))
    FOR UPDATE SKIP LOCKED
), failed AS (
    UPDATE tasks t SET failed_at = now(), error = 'worker_lost'
    FROM orphaned o
    WHERE t.id = o.id
    RETURNING t.id
), restored AS (
    UPDATE tasks t SET unmatched_at = NULL
    FROM back b
    WHERE t.id = b.id AND t.id NOT IN (SELECT id FROM orphaned)
    RETURNING t.id
), set_aside AS (
    UPDATE tasks t SET unmatched_at = now()
    FROM aside a
    WHERE t.id = a.id AND t.id NOT IN (SELECT id FROM orphaned)
    RETURNING t.id
)
SELECT 'failed' AS what, id FROM failed
UNION ALL SELECT 'restored', id FROM restored
UNION ALL SELECT 'set_aside', id FROM set_aside;

-- name: release_claims --
-- Hand claimed, unstarted tasks back to the queue (no worker took them); fenced by token.
-- Statements about a batch of tasks find each one by its own index probe (a LATERAL
-- subquery holding a row lock runs once per id): with statistics older than a burst of
-- new tasks, a plain join would let the planner scan the whole table once per id.
WITH held AS (
    SELECT t.id
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
    CROSS JOIN LATERAL (
        SELECT id FROM tasks
        WHERE id = r.id AND claim_token = r.token AND started_at IS NULL
        FOR UPDATE
    ) t
)
UPDATE tasks t
SET picked_at = NULL, claim_token = NULL, claimed_by = NULL
FROM held
WHERE t.id = held.id;

-- name: mark_started --
-- Record the start of attempts, fenced by token; committed before any is spawned. One
-- statement for a batch of (id, token) pairs, sorted by id (one lock order for all);
-- returns the ones that may run. Starting is a sign of life: the worker's heartbeat moves
-- to now(), so no sweep can judge it dead for a TTL after it sent this statement.
WITH alive AS (
    UPDATE nodes SET last_heartbeat_at = greatest(last_heartbeat_at, now())
    WHERE id = %(worker_id)s AND stopped_at IS NULL
), startable AS (
    SELECT t.id
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
    CROSS JOIN LATERAL (
        SELECT id FROM tasks
        WHERE id = r.id AND claim_token = r.token
          AND started_at IS NULL AND cancelled_at IS NULL
        FOR UPDATE
    ) t
), started AS (
    UPDATE tasks t
    SET started_at = now(), attempt = t.attempt + 1, worker_id = %(worker_id)s
    FROM startable s
    WHERE t.id = s.id
    RETURNING t.id, t.attempt, t.started_at, t.worker_id, t.scheduled_at, t.created_at
), attempt AS (
    INSERT INTO task_attempts (task_id, attempt, worker_id, started_at)
    SELECT id, attempt, worker_id, started_at FROM started
)
SELECT id, attempt,
       EXTRACT(EPOCH FROM started_at - greatest(scheduled_at, created_at))::float8 AS lateness_s
FROM started;

-- name: confirm_start --
-- Is this started attempt still the worker's to spawn? Asked when the spawn comes long
-- after the start was sent (the worker was paused or starved, and may have been judged
-- dead meanwhile). Moves the heartbeat like a start, and locks the task so that a
-- recovery in flight is waited for and seen.
WITH alive AS (
    UPDATE nodes SET last_heartbeat_at = greatest(last_heartbeat_at, now())
    WHERE id = %(worker_id)s AND stopped_at IS NULL
)
SELECT cancelled_at IS NOT NULL AS cancelled FROM tasks
WHERE id = %(id)s AND claim_token = %(token)s AND worker_id = %(worker_id)s
  AND started_at IS NOT NULL AND completed_at IS NULL AND failed_at IS NULL
FOR UPDATE;

-- name: refuse_task --
-- A worker will not run this command (its allowlist): failed, never started; fenced.
UPDATE tasks
SET failed_at = now(), error = %(error)s, worker_id = %(worker_id)s
WHERE id = %(id)s AND claim_token = %(token)s
  AND started_at IS NULL AND cancelled_at IS NULL
RETURNING id;

-- name: mark_finished --
-- Record how attempts ended, fenced by token, one statement for a batch sorted by id; a
-- failed at_least_once attempt with attempts left goes back to the queue after an
-- exponential backoff instead (attempt_retries and requeued: migration 0010). Returns
-- the ids written (the others were fenced off).
WITH current AS (
    SELECT t.id, t.attempt, o.succeeded, o.exit_code, o.error, o.output,
           (NOT o.succeeded
            AND attempt_retries(t.delivery, t.attempt, t.max_attempts, t.cancelled_at))
               AS retry
    FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(succeeded)s::boolean[],
                %(exit_codes)s::integer[], %(errors)s::text[], %(outputs)s::text[])
         AS o(id, token, succeeded, exit_code, error, output)
    CROSS JOIN LATERAL (
        SELECT id, attempt, delivery, max_attempts, cancelled_at FROM tasks
        WHERE id = o.id AND claim_token = o.token AND started_at IS NOT NULL
          AND completed_at IS NULL AND failed_at IS NULL
        FOR UPDATE
    ) t
), finished AS (
    UPDATE tasks t
    SET completed_at = CASE WHEN c.succeeded THEN now() END,
        failed_at = CASE WHEN NOT c.succeeded AND NOT c.retry THEN now() END,
        (picked_at, started_at, claim_token, due_at) =
            (SELECT * FROM requeued(c.retry, t, %(backoff_base_s)s, %(backoff_max_s)s)),
        exit_code = c.exit_code, error = c.error, output = c.output
    FROM current c
    WHERE t.id = c.id
    RETURNING t.id
)
UPDATE task_attempts a
SET finished_at = now(), exit_code = c.exit_code, error = c.error
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
           attempt_retries(t.delivery, t.attempt, t.max_attempts, t.cancelled_at) AS retry
    FROM tasks t
    LEFT JOIN nodes n ON n.id = t.worker_id
    -- started implies picked: says so, so that the in-flight index (live work) is read
    WHERE t.picked_at IS NOT NULL AND t.started_at IS NOT NULL
      AND t.completed_at IS NULL AND t.failed_at IS NULL
      AND (n.id IS NULL OR n.stopped_at IS NOT NULL
           OR n.last_heartbeat_at < now() - %(ttl_s)s * interval '1 second')
      -- Judged by a sweeper that has itself beaten within the last moments, by the
      -- database clock: one frozen between its own check and this statement (SIGSTOP,
      -- a paused VM) comes back with everyone's heartbeat stale, its own included.
      AND EXISTS (SELECT 1 FROM nodes me WHERE me.id = %(sweeper)s
                  AND me.last_heartbeat_at > now() - %(fresh_s)s * interval '1 second')
    FOR UPDATE OF t SKIP LOCKED
), recovered AS (
    UPDATE tasks t
    SET failed_at = CASE WHEN l.retry THEN NULL ELSE now() END,
        (picked_at, started_at, claim_token, due_at) =
            (SELECT * FROM requeued(l.retry, t, %(backoff_base_s)s, %(backoff_max_s)s)),
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
INSERT INTO nodes (id, kind, host, pid, address, capacity, labels)
VALUES (%(id)s, %(kind)s, %(host)s, %(pid)s, %(address)s, %(capacity)s, %(labels)s)
ON CONFLICT (id) DO UPDATE
SET last_heartbeat_at = greatest(nodes.last_heartbeat_at, now()), address = EXCLUDED.address,
    capacity = EXCLUDED.capacity, labels = EXCLUDED.labels,
    stopped_at = NULL;

-- name: heartbeat --
-- A node is still alive; workers also say how many commands they run; its metrics.
-- Never moved back: a beat whose transaction began before a start that committed first
-- would otherwise undo the start's later stamp, which the worker's lease counts on.
UPDATE nodes
SET last_heartbeat_at = greatest(last_heartbeat_at, now()), running = %(running)s,
    metrics = %(metrics)s
WHERE id = %(id)s AND stopped_at IS NULL
RETURNING id;

-- name: mark_node_draining --
-- A node takes no new work from now on (graceful shutdown).
UPDATE nodes SET draining_at = now() WHERE id = %(id)s;

-- name: mark_node_stopped --
-- A node left cleanly.
UPDATE nodes SET stopped_at = now() WHERE id = %(id)s;

-- name: prune_nodes --
-- Retention: delete up to LIMIT rows of nodes stopped or silent for longer than the
-- retention age (every start adds a row, metrics included); never a live node's. Found
-- through the heartbeat index; SKIP LOCKED: it never waits on a heartbeat.
DELETE FROM nodes
WHERE id IN (
    SELECT id FROM nodes
    WHERE last_heartbeat_at < now() - %(retention_s)s * interval '1 second'
      AND (stopped_at IS NULL OR stopped_at < now() - %(retention_s)s * interval '1 second')
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: live_workers --
-- Workers that heartbeat within the TTL and take work, least loaded first.
SELECT id, address, capacity, running, labels
FROM nodes
WHERE kind = 'worker' AND stopped_at IS NULL AND draining_at IS NULL
  AND last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
ORDER BY capacity - running DESC, id;

-- name: worker_address --
-- Where a worker listens.
SELECT address FROM nodes WHERE id = %(id)s AND kind = 'worker';

-- name: list_nodes --
-- Every node that was alive within the last hour, with its state by the database clock.
SELECT id, kind, host, pid, address, capacity, running, labels, started_at,
       last_heartbeat_at, stopped_at IS NOT NULL AS stopped,
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
                   %(cancelled_at)s, %(attempt)s) AS status;

-- name: insert_job --
-- Store a recurring job; an idempotency key already used inserts nothing.
INSERT INTO jobs (name, command, cron, timezone, delivery, max_attempts, timeout_s, env,
                  concurrency_policy, misfire_policy, starting_deadline_s, max_catchup,
                  paused_at, next_run_at, idempotency_key, request_hash, target, webhooks)
VALUES (%(name)s, %(command)s, %(cron)s, %(timezone)s, %(delivery)s, %(max_attempts)s,
        %(timeout_s)s, %(env)s, %(concurrency_policy)s, %(misfire_policy)s,
        %(starting_deadline_s)s, %(max_catchup)s,
        CASE WHEN %(paused)s THEN now() END, %(next_run_at)s, %(idempotency_key)s,
        %(request_hash)s, %(target)s, %(webhooks)s)
ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: job_by_idempotency_key --
-- The job an idempotency key already names, with the hash of the request that made it.
SELECT id, request_hash FROM jobs WHERE idempotency_key = %(key)s;

-- name: get_job --
-- One job.
SELECT * FROM jobs WHERE id = %(id)s;

-- name: hand_runs_one_at_a_time --
-- Runs made by hand of one job (run now, retry) are decided one at a time, until the
-- transaction ends, without locking the job's row: no materializer step or edit waits.
SELECT pg_advisory_xact_lock(hashtextextended('chronosync hand run ' || %(id)s::text, 0));

-- name: job_to_update --
-- One job as a PATCH reads it, unlocked: with its row version (xmin, renewed by any change
-- of the row), the database clock, and its latest occurrence already made a task.
SELECT j.*, j.xmin::text AS row_version, now() AS now,
       (SELECT max(scheduled_at) FROM tasks WHERE job_id = j.id) AS last_occurrence
FROM jobs j
WHERE j.id = %(id)s;

-- name: list_jobs --
-- Jobs newest first, paged by id.
SELECT * FROM jobs
WHERE (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: update_job --
-- Replace a job's mutable fields (the merged, validated result of a PATCH) if the row is
-- still the version the PATCH read (else nothing: the caller reads again). In the same
-- statement: pausing cancels the ticks made ahead that no coordinator took yet; resuming
-- brings back those a pause cancelled that are still ahead. Any lease on
-- the job ends: a materialization planned from the old row writes nothing.
WITH changed AS (
    UPDATE jobs
    SET name = %(name)s, command = %(command)s, cron = %(cron)s, timezone = %(timezone)s,
        delivery = %(delivery)s, max_attempts = %(max_attempts)s, timeout_s = %(timeout_s)s,
        env = %(env)s, concurrency_policy = %(concurrency_policy)s,
        misfire_policy = %(misfire_policy)s, starting_deadline_s = %(starting_deadline_s)s,
        max_catchup = %(max_catchup)s, target = %(target)s, webhooks = %(webhooks)s,
        paused_at = CASE WHEN NOT %(paused)s THEN NULL ELSE coalesce(paused_at, now()) END,
        next_run_at = %(next_run_at)s, updated_at = now(),
        lease_token = NULL, leased_until = NULL
    WHERE id = %(id)s AND xmin::text = %(row_version)s
    RETURNING *
), restored AS (
    UPDATE tasks t
    SET cancelled_at = NULL, error = NULL
    FROM changed c
    WHERE %(restore)s AND t.job_id = c.id AND t.error = %(reason)s AND t.picked_at IS NULL
      AND t.scheduled_at > now()
), cancelled AS (
    UPDATE tasks t
    SET cancelled_at = now(), error = %(reason)s
    FROM changed c
    WHERE %(cancel)s AND t.job_id = c.id AND t.picked_at IS NULL
      AND t.cancelled_at IS NULL AND t.completed_at IS NULL AND t.failed_at IS NULL
)
SELECT * FROM changed;

-- name: recent_outcomes --
-- The latest tasks of each of these jobs (for the dashboard's strip of outcomes).
SELECT j.id AS job_id, t.id, t.status, t.error, t.scheduled_at
FROM unnest(%(ids)s::bigint[]) AS j(id)
CROSS JOIN LATERAL (
    SELECT id, scheduled_at, error,
           task_status(picked_at, started_at, completed_at, failed_at, cancelled_at,
                       attempt)
               AS status
    FROM tasks
    WHERE job_id = j.id AND scheduled_at <= now()
    ORDER BY scheduled_at DESC
    LIMIT %(count)s
) t
ORDER BY j.id, t.scheduled_at;

-- name: delete_job --
-- Delete a job and, in the same statement, cancel its tasks not yet started (ticks made
-- ahead, claims not yet started, retries waiting): none starts after the answer. Its other
-- tasks stay, with their history. The job goes only if its row is still the version this
-- statement's snapshot saw: ticks inserted after that snapshot (invisible to the cancel)
-- came with an advance of the job, so then nothing happens and the caller tries again.
WITH seen AS (
    SELECT id, xmin FROM jobs WHERE id = %(id)s
), deleted AS (
    DELETE FROM jobs j
    USING seen
    WHERE j.id = seen.id AND j.xmin = seen.xmin
    RETURNING j.id
), cancelled AS (
    UPDATE tasks t
    SET cancelled_at = now(), error = %(reason)s
    FROM deleted d
    WHERE t.job_id = d.id AND t.started_at IS NULL AND t.cancelled_at IS NULL
      AND t.completed_at IS NULL AND t.failed_at IS NULL
)
SELECT (SELECT id FROM seen) AS seen, (SELECT id FROM deleted) AS deleted;

-- name: database_now --
-- The database clock.
SELECT now() AS now;

-- name: lease_jobs_to_materialize --
-- Jobs whose next occurrence falls within the horizon and that no scheduler holds, leased
-- to this one for a short while under a fresh token. Row locks last this statement only.
WITH due AS (
    SELECT id FROM jobs
    WHERE paused_at IS NULL AND next_run_at <= now() + %(horizon_s)s * interval '1 second'
      AND (leased_until IS NULL OR leased_until <= now())
    ORDER BY next_run_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j
SET lease_token = gen_random_uuid(),
    leased_until = now() + %(lease_s)s * interval '1 second'
WHERE j.id = ANY (ARRAY(SELECT id FROM due))  -- by the key: no scan of every job
RETURNING j.id, j.cron, j.timezone, j.next_run_at, j.misfire_policy, j.starting_deadline_s,
          j.max_catchup, j.lease_token, now() AS now;

-- name: make_occurrences --
-- One statement per materialization step: the jobs still leased under the step's tokens
-- advance (next occurrence not yet a task, misfire skips counted, lease ended) and their
-- planned occurrences become tasks (in order of job, then time; one already made is not
-- made again). A job whose token is gone (leased anew, edited, deleted) gets neither.
-- A job's occurrences are the slice [first, first + count) of OCCURRENCES: each advanced
-- row carries its own, so no step joins rows by estimate (a prepared statement's generic
-- plan takes each array for 10 rows, and a nested loop over thousands was quadratic).
-- The tasks' created_at is the instant the plan was made for (the lease's now()), as when
-- planning and writing shared one transaction: how late a tick was made is measured
-- against the misfire decision. Returns, per job advanced, the ids of the tasks made.
WITH advanced AS (
    UPDATE jobs j
    SET next_run_at = a.next_run_at, missed_occurrences = j.missed_occurrences + a.skipped,
        lease_token = NULL, leased_until = NULL
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(next_run_ats)b::timestamptz[],
                %(skipped)b::bigint[], %(firsts)b::int[], %(counts)b::int[])
         AS a(id, token, next_run_at, skipped, first, count)
    WHERE j.id = a.id AND j.lease_token = a.token
      AND j.id = ANY (%(ids)b::bigint[])  -- by the key: no scan of every job
    RETURNING j.id, j.command, j.delivery, j.max_attempts, j.timeout_s, j.env, j.name,
              j.concurrency_policy, j.target, j.webhooks, a.first, a.count
), made AS (
    -- A job whose target says "all": one task per live matching worker (pinned to it,
    -- grouped by a broadcast id racing schedulers compute alike), or one that waits.
    INSERT INTO tasks (command, scheduled_at, due_at, delivery, max_attempts, timeout_s,
                       env, name, job_id, concurrency_policy, created_at, target,
                       pinned_worker, broadcast_id, webhooks)
    SELECT j.command, o.at, o.at, j.delivery, j.max_attempts, j.timeout_s, j.env, j.name,
           j.id, j.concurrency_policy, %(planned_at)s::timestamptz, j.target, w.id,
           CASE WHEN j.target ? 'all'
                THEN md5(j.id || '@' || EXTRACT(EPOCH FROM o.at))::uuid END, j.webhooks
    FROM advanced j
    CROSS JOIN LATERAL unnest(
        (%(occurrences)b::timestamptz[])[j.first:j.first + j.count - 1])
        WITH ORDINALITY AS o(at, n)
    LEFT JOIN LATERAL (
        SELECT n.id FROM nodes n
        WHERE j.target ? 'all' AND n.kind = 'worker' AND n.stopped_at IS NULL
          AND n.draining_at IS NULL
          AND n.last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
          AND n.labels @> (j.target->'labels')
    ) w ON true
    ORDER BY j.id, o.n, w.id
    ON CONFLICT DO NOTHING
    RETURNING id, job_id
)
SELECT job_id,
       coalesce(array_agg(task ORDER BY task) FILTER (WHERE task IS NOT NULL), '{}')
           AS tasks
FROM (SELECT id AS job_id, NULL::bigint AS task FROM advanced
      UNION ALL
      SELECT job_id, id FROM made) r
GROUP BY job_id;

-- name: insert_occurrences --
-- The insert of make_occurrences alone, without the lease (the tests race it to pin the
-- unique key down): one occurrence already made (by any scheduler) is not made again.
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts, timeout_s, env, name,
                   job_id, concurrency_policy, target, pinned_worker, broadcast_id,
                   webhooks)
SELECT j.command, o.at, j.delivery, j.max_attempts, j.timeout_s, j.env, j.name, j.id,
       j.concurrency_policy, j.target, w.id,
       CASE WHEN j.target ? 'all'
            THEN md5(j.id || '@' || EXTRACT(EPOCH FROM o.at))::uuid END, j.webhooks
FROM unnest(%(job_ids)s::bigint[], %(occurrences)s::timestamptz[]) WITH ORDINALITY
     AS o(job_id, at, n)
JOIN jobs j ON j.id = o.job_id
LEFT JOIN LATERAL (
    SELECT n.id FROM nodes n
    WHERE j.target ? 'all' AND n.kind = 'worker' AND n.stopped_at IS NULL
      AND n.draining_at IS NULL
      AND n.last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second'
      AND n.labels @> (j.target->'labels')
) w ON true
ORDER BY o.n, w.id
ON CONFLICT DO NOTHING
RETURNING id, job_id;

-- name: skip_forbidden --
-- concurrency_policy forbid: a due occurrence whose job still runs an earlier one is
-- skipped (never started), as a Kubernetes CronJob does; in the same statement each job
-- counts the occurrences skipped (no transaction holds a job's lock across round trips).
WITH skipped AS (
    UPDATE tasks t
    SET cancelled_at = now(), error = 'skipped: concurrency_policy forbid'
    WHERE t.concurrency_policy = 'forbid' AND t.due_at <= now()
      AND t.picked_at IS NULL AND t.cancelled_at IS NULL
      AND t.completed_at IS NULL AND t.failed_at IS NULL
      AND EXISTS (SELECT 1 FROM tasks r
                  WHERE r.job_id = t.job_id AND r.id <> t.id AND r.picked_at IS NOT NULL
                    AND r.completed_at IS NULL AND r.failed_at IS NULL
                    AND r.cancelled_at IS NULL)
    RETURNING t.id, t.job_id
), counted AS (
    UPDATE jobs j
    SET forbidden_occurrences = forbidden_occurrences + s.skipped
    FROM (SELECT job_id, count(*) AS skipped FROM skipped GROUP BY job_id) s
    WHERE j.id = s.job_id
)
SELECT id, job_id FROM skipped;

-- name: job_health --
-- Per job, what cron users alert on: its last run's start, its last success, and the
-- occurrences its policies skipped; and what its expected period is reckoned from (its
-- schedule, by the database clock). Each job's latest tasks are read through its index.
SELECT j.id, coalesce(j.name, '') AS name, j.missed_occurrences, j.forbidden_occurrences,
       j.cron, j.timezone, j.paused_at IS NOT NULL AS paused, j.created_at, now() AS now,
       (SELECT max(started_at) FROM (SELECT started_at FROM tasks
                                     WHERE job_id = j.id AND started_at IS NOT NULL
                                     ORDER BY id DESC LIMIT 1) r) AS last_run_at,
       (SELECT max(completed_at) FROM (SELECT completed_at FROM tasks
                                       WHERE job_id = j.id AND completed_at IS NOT NULL
                                       ORDER BY id DESC LIMIT 1) s) AS last_success_at
FROM jobs j
ORDER BY j.id;

-- name: replace_running --
-- concurrency_policy replace: an earlier occurrence not finished when a later one is due
-- is cancelled; returns where the cancelled ones run, to signal their workers.
UPDATE tasks r
SET cancelled_at = now()
WHERE r.concurrency_policy = 'replace' AND r.job_id IS NOT NULL  -- tasks_job_unfinished
  AND r.completed_at IS NULL AND r.failed_at IS NULL AND r.cancelled_at IS NULL
  AND EXISTS (SELECT 1 FROM tasks t
              WHERE t.job_id = r.job_id AND t.scheduled_at > r.scheduled_at
                AND t.due_at <= now() AND t.cancelled_at IS NULL
                AND t.completed_at IS NULL AND t.failed_at IS NULL)
RETURNING r.id, r.job_id, r.started_at, r.worker_id;

-- name: metrics_sources --
-- Live nodes' own metrics, for /metrics.
SELECT id, kind, metrics FROM nodes
WHERE stopped_at IS NULL AND metrics IS NOT NULL
  AND last_heartbeat_at >= now() - %(ttl_s)s * interval '1 second';

-- name: queue_depth --
-- Waiting tasks: due now (and unclaimed), and due later; and how long the oldest due one
-- has waited, counted from its submission when it was submitted for the past.
SELECT count(*) FILTER (WHERE due_at <= now()) AS due,
       count(*) FILTER (WHERE due_at > now()) AS later,
       coalesce(extract(epoch FROM now() - min(greatest(due_at, created_at))
                                           FILTER (WHERE due_at <= now())), 0)::float8
           AS due_age_s
FROM tasks
WHERE picked_at IS NULL AND cancelled_at IS NULL
  AND completed_at IS NULL AND failed_at IS NULL;

-- name: in_flight --
-- Tasks claimed and not finished: picked (not yet started) and running.
SELECT count(*) FILTER (WHERE started_at IS NULL) AS picked,
       count(*) FILTER (WHERE started_at IS NOT NULL) AS running
FROM tasks
WHERE picked_at IS NOT NULL AND completed_at IS NULL AND failed_at IS NULL;

-- name: prune_finished --
-- Retention: delete up to LIMIT finished tasks older than the retention age (their
-- attempts go with them). Small batches and SKIP LOCKED: it never holds up a claim.
DELETE FROM tasks
WHERE id IN (
    SELECT id FROM tasks
    WHERE (completed_at IS NOT NULL OR failed_at IS NOT NULL OR cancelled_at IS NOT NULL)
      AND coalesce(completed_at, failed_at, cancelled_at)
          < now() - %(retention_s)s * interval '1 second'
      AND (started_at IS NULL OR completed_at IS NOT NULL OR failed_at IS NOT NULL)
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: lock_task --
-- One task with its derived status, held against changes while a retry is made from it.
SELECT t.*, task_status(t.picked_at, t.started_at, t.completed_at, t.failed_at,
                        t.cancelled_at, t.attempt) AS status
FROM tasks t
WHERE t.id = %(id)s
FOR SHARE;

-- name: insert_retry --
-- A retry by hand: a new task from a finished one, due at AT and naming it in retry_of.
-- What runs, how and where is copied; everything else starts afresh. A column added to
-- tasks that says what runs, how or where (a target) is copied here too, in both lists.
-- job_id too: a retry of a job's occurrence is one more occurrence of the job (in its
-- history, under its concurrency policy); AT is off the whole second, so the unique
-- (job_id, scheduled_at) key never meets a tick's (see repository.hand_instants).
-- A broadcast's task is retried once, on one worker its target's labels match (not
-- pinned: the worker it was pinned to may be gone).
INSERT INTO tasks (command, delivery, max_attempts, timeout_s, env, name, job_id,
                   concurrency_policy, target, webhooks,
                   scheduled_at, retry_of, idempotency_key, request_hash)
SELECT command, delivery, max_attempts, timeout_s, env, name, job_id,
       concurrency_policy, target - 'all', webhooks,
       %(at)s, id, %(idempotency_key)s, %(request_hash)s
FROM tasks
WHERE id = %(id)s
ON CONFLICT DO NOTHING
RETURNING id;

-- name: unfinished_before --
-- What a job's new occurrence due at AT meets: its other occurrences not finished, in
-- flight or due before it (forbid skips the new one for them, replace cancels them).
SELECT id, scheduled_at,
       task_status(picked_at, started_at, completed_at, failed_at, cancelled_at, attempt)
           AS status
FROM tasks
WHERE job_id = %(job_id)s AND picked_at IS NOT NULL
  AND completed_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
UNION
SELECT id, scheduled_at,
       task_status(picked_at, started_at, completed_at, failed_at, cancelled_at, attempt)
FROM tasks
WHERE job_id = %(job_id)s AND picked_at IS NULL AND scheduled_at < %(at)s
  AND completed_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL
ORDER BY scheduled_at, id;

-- name: claim_webhook_deliveries --
-- Webhooks: take up to LIMIT due deliveries no live lease holds, under a lease of LEASE_S
-- (an attempt is counted as it is taken, so one whose deliverer died still counts; the
-- count is the fencing token of the attempt's result).
WITH due AS (
    SELECT id FROM webhook_deliveries
    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND due_at <= now()
      AND (leased_by IS NULL OR leased_until <= now())  -- a dead deliverer's lease ends
    ORDER BY due_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries d
SET attempts = d.attempts + 1, last_attempt_at = now(), leased_by = %(owner)s,
    leased_until = now() + %(lease_s)s * interval '1 second'
FROM due
WHERE d.id = due.id
RETURNING d.id, d.task_id, d.job_id, d.event, d.url, d.secret, d.payload, d.occurred_at,
          d.attempts;

-- name: finish_webhook_attempt --
-- Webhooks: how an attempt ended, if the delivery is still this attempt's (same holder,
-- same count): delivered; or due again after RETRY_IN_S; or given up (GIVE_UP).
UPDATE webhook_deliveries
SET last_status = %(status)s, last_error = %(error)s,
    history = history || jsonb_build_array(jsonb_build_object(
        'attempt', attempts, 'started_at', last_attempt_at, 'finished_at', now(),
        'status', %(status)s::integer, 'error', %(error)s::text, 'by', %(owner)s::text)),
    delivered_at = CASE WHEN %(delivered)s THEN now() END,
    gave_up_at = CASE WHEN NOT %(delivered)s AND %(give_up)s THEN now() END,
    due_at = CASE WHEN %(delivered)s OR %(give_up)s THEN due_at
                  ELSE now() + %(retry_in_s)s * interval '1 second' END,
    leased_by = NULL, leased_until = NULL
WHERE id = %(id)s AND leased_by = %(owner)s AND attempts = %(attempt)s
  AND delivered_at IS NULL AND gave_up_at IS NULL
RETURNING id;

-- name: task_webhook_deliveries --
-- Webhooks: the deliveries of one task's events, oldest first (GET /tasks/{id}).
SELECT id, event, url, occurred_at, attempts, last_attempt_at, last_status, last_error,
       history, delivered_at, gave_up_at, due_at
FROM webhook_deliveries
WHERE task_id = %(id)s
ORDER BY id;

-- name: job_webhook_deliveries --
-- Webhooks: the deliveries of a job's own events (misfires), newest first, at most LIMIT.
SELECT id, event, url, occurred_at, attempts, last_attempt_at, last_status, last_error,
       history, delivered_at, gave_up_at, due_at
FROM webhook_deliveries
WHERE job_id = %(id)s AND task_id IS NULL
ORDER BY id DESC
LIMIT %(limit)s;

-- name: webhook_delivery_counts --
-- Webhooks, for /metrics: deliveries waiting (due or backing off), and given up so far.
-- Each count reads its own partial index.
SELECT (SELECT count(*) FROM webhook_deliveries
        WHERE delivered_at IS NULL AND gave_up_at IS NULL) AS pending,
       (SELECT count(*) FROM webhook_deliveries WHERE gave_up_at IS NOT NULL) AS given_up;

-- name: prune_webhook_deliveries --
-- Retention for deliveries with no task (a job's misfires; a task's go with it): delete up
-- to LIMIT finished ones older than the retention age.
DELETE FROM webhook_deliveries
WHERE id IN (
    SELECT id FROM webhook_deliveries
    WHERE task_id IS NULL AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)
      AND occurred_at < now() - %(retention_s)s * interval '1 second'
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id;

-- name: lock_migrations --
-- Migrations: one node at a time, for the rest of the transaction (chronocore.migrate).
SELECT pg_advisory_xact_lock(%(lock_id)s);

-- name: create_schema_migrations --
-- Migrations: the record of what was applied, made before the first migration runs.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: applied_migrations --
-- Migrations: the versions applied so far.
SELECT version FROM schema_migrations;

-- name: record_migration --
-- Migrations: one more applied, in the same transaction as its statements.
INSERT INTO schema_migrations (version, name) VALUES (%(version)s, %(name)s);
