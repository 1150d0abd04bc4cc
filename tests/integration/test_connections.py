"""What a node costs PostgreSQL in connections: each names itself (application_name is
its node id, so pg_stat_activity says whose connections are whose), and a worker keeps
to two by default however busy it is, so a fleet of a hundred needs two hundred."""

from __future__ import annotations

from harness import Cluster, node_id, wait_for

TASKS = 150


def test_a_busy_worker_uses_at_most_two_connections_and_every_node_names_its_own(
    cluster: Cluster,
) -> None:
    nodes = [cluster.start("scheduler"), cluster.start("coordinator"),
             cluster.start("worker", CHRONOSYNC_WORKER_CAPACITY="32")]
    cluster.wait_ready(coordinators=1, workers=1)
    ids = [node_id(cluster, node) for node in nodes]
    worker = ids[-1]
    wait_for(lambda: all(cluster.query(
                 "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (i,))
                 for i in ids),
             timeout=15, what="a connection named after each node")
    created = [cluster.http("POST", "/schedule", {"command": "sleep 0.05"})[1]["id"]
               for _ in range(TASKS)]
    most = 0

    def all_ended() -> bool:
        nonlocal most
        rows = cluster.query(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = %s)"
            " AS worker_connections, (SELECT count(*) FROM tasks WHERE id = ANY(%s)"
            " AND completed_at IS NULL AND failed_at IS NULL) AS unfinished",
            (worker, created))
        most = max(most, rows[0]["worker_connections"])
        return rows[0]["unfinished"] == 0

    wait_for(all_ended, timeout=120, interval=0.02, what=f"{TASKS} tasks to end")
    assert 1 <= most <= 2, f"the worker held {most} connections at once"
    failed = cluster.query("SELECT count(*) AS n FROM tasks WHERE id = ANY(%s) AND "
                           "completed_at IS NULL", (created,))[0]["n"]
    assert failed == 0
