"""History retention: old finished tasks are pruned in small batches; nothing else is."""

from __future__ import annotations

from harness import Cluster, wait_for


def test_old_finished_tasks_are_pruned_and_nothing_else(cluster: Cluster) -> None:
    old = "now() - interval '40 days'"
    cluster.query(f"""
        INSERT INTO tasks (command, scheduled_at, picked_at, started_at, completed_at)
        SELECT 'old ok', {old}, {old}, {old}, {old} FROM generate_series(1, 1200);
        INSERT INTO tasks (command, scheduled_at, picked_at, started_at, failed_at, error)
        VALUES ('old failed', {old}, {old}, {old}, {old}, 'exit 1');
        INSERT INTO tasks (command, scheduled_at, cancelled_at)
        VALUES ('old cancelled', {old}, {old});
        INSERT INTO tasks (command, scheduled_at, picked_at, started_at, completed_at)
        VALUES ('recent ok', now() - interval '1 day', now(), now(), now() - interval '1 day');
        INSERT INTO tasks (command, scheduled_at, picked_at, started_at, cancelled_at)
        VALUES ('old, cancelled while running', {old}, {old}, {old}, {old});
        INSERT INTO tasks (command, scheduled_at) VALUES ('waiting', now() + interval '1 day');
    """)
    cluster.start("coordinator", CHRONOSYNC_RETENTION_DAYS="30")

    def pruned() -> bool:
        return not cluster.query("SELECT 1 FROM tasks WHERE command LIKE 'old %' "
                                 "AND command <> 'old, cancelled while running'")

    wait_for(pruned, timeout=30, what="the old finished tasks to be pruned")
    left = sorted(r["command"] for r in cluster.query("SELECT command FROM tasks"))
    assert left == ["old, cancelled while running", "recent ok", "waiting"]
    assert cluster.query("SELECT count(*) AS n FROM task_attempts")[0]["n"] == 0


def test_rows_of_nodes_stopped_or_dead_longer_than_the_retention_are_pruned(
    cluster: Cluster,
) -> None:
    old = "now() - interval '40 days'"
    recent = "now() - interval '1 day'"
    cluster.query(f"""
        INSERT INTO nodes (id, kind, host, pid, started_at, last_heartbeat_at, stopped_at)
        VALUES ('old-stopped', 'worker', 'h', 1, {old}, {old}, {old}),
               ('old-dead', 'coordinator', 'h', 2, {old}, {old}, NULL),
               ('recently-stopped', 'worker', 'h', 3, {old}, {recent}, {recent}),
               ('recently-dead', 'scheduler', 'h', 4, {old}, {recent}, NULL),
               ('stopped-lately-after-a-long-silence', 'worker', 'h', 5, {old}, {old},
                {recent});
    """)
    coordinator = cluster.start("coordinator", CHRONOSYNC_RETENTION_DAYS="30")

    def pruned() -> bool:
        return not cluster.query("SELECT 1 FROM nodes WHERE id LIKE 'old-%'")

    wait_for(pruned, timeout=30, what="the rows of nodes gone for 40 days to be pruned")
    left = {r["id"] for r in cluster.query("SELECT id FROM nodes")}
    assert {"recently-stopped", "recently-dead",
            "stopped-lately-after-a-long-silence"} <= left
    # The live coordinator that pruned them is still there.
    assert cluster.query("SELECT 1 FROM nodes WHERE pid = %s AND stopped_at IS NULL",
                         (coordinator.pid,))
