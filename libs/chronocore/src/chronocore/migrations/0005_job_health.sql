-- What cron users alert on, kept per job as the events happen (a scrape reads one row per
-- job, never the task history): occurrences the misfire policy skipped while no scheduler
-- ran, and due occurrences the forbid policy skipped while an earlier run was in flight.
ALTER TABLE jobs ADD COLUMN missed_occurrences bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN forbidden_occurrences bigint NOT NULL DEFAULT 0;

-- A task waiting for its next at_least_once attempt is "retrying", not "scheduled": the
-- status reads the attempt count too (attempts made so far; 0 before the first).
DROP FUNCTION task_status(timestamptz, timestamptz, timestamptz, timestamptz, timestamptz);
CREATE FUNCTION task_status(picked_at timestamptz, started_at timestamptz,
                            completed_at timestamptz, failed_at timestamptz,
                            cancelled_at timestamptz, attempt integer)
RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN completed_at IS NOT NULL THEN 'succeeded'
        WHEN cancelled_at IS NOT NULL THEN 'cancelled'
        WHEN failed_at IS NOT NULL THEN 'failed'
        WHEN started_at IS NOT NULL THEN 'running'
        WHEN picked_at IS NOT NULL THEN 'picked'
        WHEN attempt > 0 THEN 'retrying'
        ELSE 'scheduled'
    END
$$;
