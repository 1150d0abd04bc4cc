-- The retry rule, once for both ways an attempt ends without success: its outcome
-- (mark_finished) and its worker's death (recover_lost_runs).
-- An at_least_once task with attempts left, not cancelled, is retried...
CREATE FUNCTION attempt_retries(delivery text, attempt integer, max_attempts integer,
                                cancelled_at timestamptz) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$
    SELECT delivery = 'at_least_once' AND attempt < max_attempts AND cancelled_at IS NULL
$$;

-- ...by going back to the queue: unclaimed and unstarted (its token void, so the old
-- attempt can write nothing more), due after the exponential backoff; a task not retried
-- keeps these columns as they are. Both statements write them as
--     SET (picked_at, started_at, claim_token, due_at) =
--         (SELECT * FROM requeued(retry, t, base_s, max_s))
-- (one row; a table function, so that the planner inlines it).
CREATE FUNCTION requeued(retry boolean, t tasks, backoff_base_s double precision,
                         backoff_max_s double precision)
    RETURNS TABLE (picked_at timestamptz, started_at timestamptz, claim_token uuid,
                   due_at timestamptz)
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$
    SELECT CASE WHEN retry THEN NULL ELSE t.picked_at END,
           CASE WHEN retry THEN NULL ELSE t.started_at END,
           CASE WHEN retry THEN NULL ELSE t.claim_token END,
           CASE WHEN retry THEN retry_due_at(t.attempt, backoff_base_s, backoff_max_s)
                ELSE t.due_at END
$$;
