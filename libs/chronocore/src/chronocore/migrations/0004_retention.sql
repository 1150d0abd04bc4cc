-- History retention: finished tasks are pruned once older than a configured age, in small
-- batches; this index finds them without touching what is still waiting or running.
CREATE INDEX tasks_finished ON tasks ((coalesce(completed_at, failed_at, cancelled_at)))
    WHERE completed_at IS NOT NULL OR failed_at IS NOT NULL OR cancelled_at IS NOT NULL;
