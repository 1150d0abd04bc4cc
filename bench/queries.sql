-- Every statement the bench runs (bench/run.py), each under a "-- name: NAME --" header
-- and a one-line description, read with chronocore.queries.parse. The cluster's own
-- statements (claim_due, prune_finished) come from chronocore's queries.sql.

-- name: live_nodes --
-- Nodes up and heartbeating within the last WITHIN_S seconds.
SELECT count(*) AS n FROM nodes
WHERE stopped_at IS NULL AND last_heartbeat_at > now() - %(within_s)s * interval '1 second';

-- name: unfinished --
-- Tasks not yet ended.
SELECT count(*) AS n FROM tasks
WHERE completed_at IS NULL AND failed_at IS NULL AND cancelled_at IS NULL;

-- name: insert_due --
-- COUNT tasks running COMMAND, the first due DELAY_S from now, then one every SPACING_S.
INSERT INTO tasks (command, scheduled_at)
SELECT %(command)s, now() + %(delay_s)s * interval '1 second'
                         + (i * %(spacing_s)s) * interval '1 second'
FROM generate_series(0, %(count)s - 1) AS i;

-- name: lateness_since --
-- Seconds from due to start of each task after SINCE that started.
SELECT EXTRACT(EPOCH FROM started_at - scheduled_at)::float8 AS l
FROM tasks WHERE id > %(since)s AND started_at IS NOT NULL;

-- name: last_task_id --
-- The newest task's id (0 with none): what a measure's tasks come after.
SELECT coalesce(max(id), 0) AS id FROM tasks;

-- name: instant_in --
-- The database's now() plus SECONDS: an instant every node agrees on.
SELECT now() + %(seconds)s * interval '1 second' AS at;

-- name: insert_burst --
-- COUNT `true` tasks all due at AT.
INSERT INTO tasks (command, scheduled_at)
SELECT 'true', %(at)s FROM generate_series(1, %(count)s);

-- name: burst_span --
-- Seconds from AT to the last end among the tasks after SINCE, and how many succeeded.
SELECT EXTRACT(EPOCH FROM max(coalesce(completed_at, failed_at)) - %(at)s)::float8 AS span,
       count(*) FILTER (WHERE completed_at IS NOT NULL) AS ok
FROM tasks WHERE id > %(since)s;

-- name: mean_batches --
-- Each statement stamps its rows with one now(): distinct stamps count statements, so
-- these are the mean batch sizes of the claim, the start and the outcome writes.
SELECT count(*)::float8 / count(DISTINCT picked_at) AS claim,
       count(*)::float8 / count(DISTINCT started_at) AS start,
       count(*)::float8 / count(DISTINCT completed_at) AS outcome
FROM tasks WHERE id > %(since)s;

-- name: finished_count --
-- How many tasks have completed (the history the claim is measured against).
SELECT count(*) AS n FROM tasks WHERE completed_at IS NOT NULL;

-- name: insert_history --
-- COUNT completed tasks, one a second going back from a day ago.
INSERT INTO tasks (command, scheduled_at, picked_at, started_at, completed_at)
SELECT 'history', t, t, t, t
FROM (SELECT now() - interval '1 day' - i * interval '1 second' AS t
      FROM generate_series(1, %(count)s) AS i) s;

-- name: analyze_tasks --
-- Fresh statistics and visibility after a bulk insert, as autovacuum would make later.
VACUUM ANALYZE tasks;

-- name: make_due_since --
-- The tasks after SINCE due at once (their scheduled_at stays).
UPDATE tasks SET due_at = now() - interval '1 second' WHERE id > %(since)s;

-- name: delete_since --
-- Remove the tasks after SINCE.
DELETE FROM tasks WHERE id > %(since)s;

-- name: age_half_the_history --
-- Half the history 60 days older: what pruning then deletes.
UPDATE tasks SET completed_at = completed_at - interval '60 days'
WHERE command = 'history' AND id %% 2 = 0;

-- name: delete_submitted_probes --
-- Remove the tasks POST /schedule made while its rate was measured.
DELETE FROM tasks WHERE scheduled_at = '2099-01-01T00:00:00Z';

-- name: insert_minutely_jobs --
-- COUNT jobs `* * * * *`, each next due at the start of the minute after next.
INSERT INTO jobs (command, cron, next_run_at)
SELECT 'true', '* * * * *', date_trunc('minute', now()) + interval '2 minutes'
FROM generate_series(1, %(count)s);

-- name: delete_job_tasks --
-- Remove every job's tasks.
DELETE FROM tasks WHERE job_id IS NOT NULL;

-- name: delete_jobs --
-- Remove every job.
DELETE FROM jobs;

-- name: delete_nodes --
-- Forget every node (the fleet starts from none).
DELETE FROM nodes;

-- name: claim_to_start_since --
-- Seconds from claim to start of each task after SINCE, and its worker.
SELECT EXTRACT(EPOCH FROM started_at - picked_at)::float8 AS c, worker_id
FROM tasks WHERE id > %(since)s;

-- name: drop_idle_database --
-- The idle measure's database, from an earlier run.
DROP DATABASE IF EXISTS chronosync_idle;

-- name: create_idle_database --
-- A database of the idle measure's own, so nothing else in the bench is counted.
CREATE DATABASE chronosync_idle;

-- name: tuples_read --
-- Tuples this database has read so far.
SELECT tup_returned + tup_fetched AS n FROM pg_stat_database
WHERE datname = current_database();

-- name: insert_idle_history --
-- Finished tasks FIRST..LAST, one a second going back from a day ago: three in four of
-- JOBS recurring jobs (their lower half forbid, the upper half replace).
INSERT INTO tasks (command, scheduled_at, due_at, picked_at, started_at, completed_at,
                   attempt, job_id, concurrency_policy, worker_id)
SELECT 'history', at, at, at, at, at + interval '1 second', 1, job,
       CASE WHEN job <= %(jobs)s::int / 2 THEN 'forbid'
            WHEN job IS NOT NULL THEN 'replace' END, 'worker-gone'
FROM generate_series(%(first)s::int, %(last)s::int) AS i,
     LATERAL (SELECT now() - interval '1 day' - i * interval '1 second' AS at,
                     CASE WHEN i %% 4 <> 0 THEN i %% %(jobs)s::int + 1 END AS job) s;

-- name: flush_statistics --
-- Report this backend's statistics now, not up to a second later.
SELECT pg_stat_force_next_flush();

-- name: node_updates --
-- Rows of nodes updated so far (heartbeats, mostly).
SELECT n_tup_upd AS n FROM pg_stat_user_tables WHERE relname = 'nodes';

-- name: client_connections --
-- Connections of clients open now.
SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'client backend';

-- name: insert_long_first_attempts --
-- PER_DELIVERY tasks of each delivery whose first attempt sleeps a minute and whose
-- retry ends at once (at_most_once with 1 attempt, at_least_once with 3).
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts)
SELECT 'test "$CHRONOSYNC_ATTEMPT" -gt 1 || sleep 60', now(), d, m
FROM generate_series(1, %(per_delivery)s),
     (VALUES ('at_most_once', 1), ('at_least_once', 3)) AS v(d, m);

-- name: unstarted_since --
-- Tasks after SINCE not started yet.
SELECT count(*) AS n FROM tasks WHERE id > %(since)s AND started_at IS NULL;

-- name: busiest_workers --
-- The pids of the COUNT workers running the most tasks after SINCE.
SELECT n.pid, count(*) FROM tasks t JOIN nodes n ON n.id = t.worker_id
WHERE t.id > %(since)s GROUP BY n.pid ORDER BY count(*) DESC LIMIT %(count)s;

-- name: tasks_on_pids --
-- The tasks after SINCE on the workers with these PIDS.
SELECT t.id FROM tasks t JOIN nodes n ON n.id = t.worker_id
WHERE t.id > %(since)s AND n.pid = ANY(%(pids)s);

-- name: database_now --
-- The database clock: when a kill happened, by the clock recoveries are stamped with.
SELECT now() AS t;

-- name: lost_among --
-- How many of these tasks' attempts were recorded as worker_lost.
SELECT count(*) AS n FROM task_attempts WHERE task_id = ANY(%(ids)s) AND error = 'worker_lost';

-- name: last_lost_among --
-- When the last of these tasks' attempts was recorded as worker_lost.
SELECT max(finished_at) AS t FROM task_attempts
WHERE task_id = ANY(%(ids)s) AND error = 'worker_lost';

-- name: unended_among --
-- How many of these tasks have neither completed nor failed.
SELECT count(*) AS n FROM tasks
WHERE id = ANY(%(ids)s) AND completed_at IS NULL AND failed_at IS NULL;

-- name: ends_by_delivery --
-- Per delivery: of these tasks, those failed as worker_lost on their first attempt, those
-- completed, and all.
SELECT delivery,
       count(*) FILTER (WHERE failed_at IS NOT NULL AND error = 'worker_lost'
                          AND attempt = 1) AS lost,
       count(*) FILTER (WHERE completed_at IS NOT NULL) AS ok,
       count(*) AS n
FROM tasks WHERE id = ANY(%(ids)s) GROUP BY delivery;

-- name: cancel_unended_since --
-- Cancel the tasks after SINCE that have not ended.
UPDATE tasks SET cancelled_at = now()
WHERE id > %(since)s AND completed_at IS NULL AND failed_at IS NULL;

-- name: insert_sleepers --
-- COUNT at_least_once tasks (2 attempts) sleeping 30 s, due now.
INSERT INTO tasks (command, scheduled_at, delivery, max_attempts)
SELECT 'sleep 30', now(), 'at_least_once', 2 FROM generate_series(1, %(count)s);

-- name: started_on_pid --
-- Tasks after SINCE started on the worker with this PID.
SELECT count(*) AS n FROM tasks t JOIN nodes n ON n.id = t.worker_id
WHERE t.id > %(since)s AND t.started_at IS NOT NULL AND n.pid = %(pid)s;

-- name: lost_since --
-- Attempts of tasks after SINCE recorded as worker_lost.
SELECT count(*) AS n FROM task_attempts a JOIN tasks t ON t.id = a.task_id
WHERE t.id > %(since)s AND a.error = 'worker_lost';

-- name: last_lost_since --
-- When the last attempt of a task after SINCE was recorded as worker_lost.
SELECT max(finished_at) AS t FROM task_attempts
WHERE task_id > %(since)s AND error = 'worker_lost';

-- name: cancel_since --
-- Cancel every task after SINCE.
UPDATE tasks SET cancelled_at = now() WHERE id > %(since)s;

-- name: insert_now --
-- COUNT `true` tasks due now.
INSERT INTO tasks (command, scheduled_at) SELECT 'true', now() FROM generate_series(1, %(count)s);

-- name: picked_since --
-- Tasks after SINCE claimed.
SELECT count(*) AS n FROM tasks WHERE id > %(since)s AND picked_at IS NOT NULL;

-- name: completed_since --
-- Tasks after SINCE completed.
SELECT count(*) AS n FROM tasks WHERE id > %(since)s AND completed_at IS NOT NULL;

-- name: last_start_since --
-- When the last task after SINCE started.
SELECT max(started_at) AS t FROM tasks WHERE id > %(since)s;
