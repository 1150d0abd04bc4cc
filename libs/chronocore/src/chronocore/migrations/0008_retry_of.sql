-- A task made by POST /tasks/{id}/retry names the finished task it retries. No foreign
-- key: retention prunes old tasks, and a retry outlives the task it came from (the id
-- then names a task gone, as a job_id may name a job deleted).
ALTER TABLE tasks ADD COLUMN retry_of bigint;
