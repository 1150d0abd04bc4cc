-- The statements the tools run, each under a "-- name: NAME --" header and a one-line
-- description, as in chronocore's queries.sql (read with chronocore.queries.load).

-- name: dev_status --
-- The figures of `chronosync dev`'s live line: finished and running tasks, nodes alive.
SELECT (SELECT count(*) FROM tasks
        WHERE completed_at IS NOT NULL OR failed_at IS NOT NULL) AS finished,
       (SELECT count(*) FROM tasks
        WHERE started_at IS NOT NULL AND completed_at IS NULL AND failed_at IS NULL)
           AS running,
       (SELECT count(*) FROM nodes
        WHERE stopped_at IS NULL AND last_heartbeat_at > now() - interval '5 seconds')
           AS alive,
       (SELECT count(*) FROM nodes WHERE stopped_at IS NULL) AS known;
