-- GET /tasks?worker=: a worker's tasks, newest first, without reading everyone else's.
CREATE INDEX tasks_worker ON tasks (worker_id, id) WHERE worker_id IS NOT NULL;
