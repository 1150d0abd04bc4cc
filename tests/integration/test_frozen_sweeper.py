"""A coordinator frozen (SIGSTOP) through a database restart judges no live worker dead.

While the coordinator is frozen its heartbeat fails none of its beats, so it cannot learn
from them that the database went away. Meanwhile every worker's heartbeat goes stale.
When it resumes, right after the database is back and before the worker (frozen with it,
as in a host paused whole, and resumed a second later) has beaten again, it must not
sweep at once: the silence it sees is its own. The long-running task
on the live worker must stay running through every cycle; and once the worker really
dies, the same coordinator must still recover its task (the sweep was not simply off).

The test run's shared database server cannot be stopped, so this test runs its own.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster, own_postgres, query, running_cluster, wait_for

from chronocore import db
from chronocore.repository import TaskRepository
from chronosync_dev.pgcluster import LocalCluster

pytestmark = pytest.mark.slow

# Slower beats than the harness's 0.2 s: a beat that itself has to reconnect after the
# restart must still fit within one interval, or that slow beat alone (not the freeze)
# would make the coordinator wait, and the test would no longer tell the two apart.
HEARTBEAT_S = 1.0
TTL_S = 3.0
# The database stays down longer than a TTL, so every heartbeat is stale when it returns.
OUTAGE_S = TTL_S + 2.0
# Freeze, restart, resume, a few times over: each a fresh chance to judge wrongly.
CYCLES = 3
# The worker's own TTL, by which it fences itself (chronocore.fence): longer than the
# outage, so its run lives through it and only a sweeper's verdict could end it. With one
# TTL everywhere, the worker would kill its run a TTL into the outage by itself.
WORKER_TTL_S = 60.0
# How long after the coordinator the worker resumes: well within a TTL of the
# coordinator's own return, so a coordinator that counts afresh judges no one.
WORKER_RESUMES_AFTER_S = 1.0
# After resuming, the coordinator is watched this long: past the gate (a TTL plus the
# pool's wait of connectivity) with a margin, so a wrongful sweep would have happened.
WATCH_S = TTL_S + db.POOL_WAIT_S + 2.0


@pytest.fixture
def own_pg() -> Iterator[LocalCluster]:
    with own_postgres("chronosync-frozen-") as server:
        yield server


def lost_runs(cluster: Cluster) -> list[dict[str, object]]:
    return cluster.query(
        "SELECT t.id, t.error, a.error AS attempt_error FROM tasks t"
        " LEFT JOIN task_attempts a ON a.task_id = t.id"
        " WHERE t.error = 'worker_lost' OR a.error = 'worker_lost'")


def beat_since(cluster: Cluster, kind: str, seconds: float) -> bool:
    rows = cluster.query(
        "SELECT count(*) AS n FROM nodes WHERE kind = %s AND stopped_at IS NULL"
        " AND last_heartbeat_at > now() - %s * interval '1 second'", (kind, seconds))
    return rows[0]["n"] > 0


def test_a_coordinator_frozen_across_a_database_restart_judges_no_live_worker_dead(
    own_pg: LocalCluster, tmp_path: Path
) -> None:
    timings = {"CHRONOSYNC_HEARTBEAT_S": str(HEARTBEAT_S), "CHRONOSYNC_NODE_TTL_S": str(TTL_S)}
    with running_cluster(own_pg.dsn(), tmp_path) as cluster:
        cluster.start("scheduler", **timings)
        coordinator = cluster.start("coordinator", **timings)
        worker = cluster.start("worker", **{**timings,
                                            "CHRONOSYNC_NODE_TTL_S": str(WORKER_TTL_S)})
        cluster.wait_ready(coordinators=1, workers=1)

        status, answer = cluster.http("POST", "/schedule", {"command": "sleep 600"})
        assert status == 201, answer
        task_id = answer["id"]
        cluster.wait_task(task_id, ("running",), timeout=30)

        for cycle in range(CYCLES):
            # The worker is frozen too (a host paused whole) and resumes a moment after
            # the coordinator, well within a TTL: its first beat cannot win the race
            # against the coordinator's first sweep, so a sweep that trusts connectivity
            # from before the freeze always finds it stale.
            os.kill(coordinator.pid, signal.SIGSTOP)
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                own_pg.stop()
                time.sleep(OUTAGE_S)  # the outage itself: longer than a TTL
                own_pg.start()
            finally:
                os.kill(coordinator.pid, signal.SIGCONT)
            try:
                time.sleep(WORKER_RESUMES_AFTER_S)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            watch_until = time.monotonic() + WATCH_S
            while time.monotonic() < watch_until:
                lost = lost_runs(cluster)
                assert not lost, f"cycle {cycle}: a live worker was judged dead: {lost}"
                time.sleep(0.1)
            assert beat_since(cluster, "coordinator", TTL_S), "the coordinator is not back"
            assert beat_since(cluster, "worker", TTL_S), "the worker is not back"
            assert cluster.task(task_id)["status"] == "running"

        # The sweep still works: a worker that really dies loses its task.
        os.kill(worker.pid, signal.SIGKILL)
        wait_for(lambda: cluster.task(task_id)["status"] == "failed",
                 timeout=TTL_S + db.POOL_WAIT_S + 15, what="the dead worker's task to fail")
        assert cluster.task(task_id)["error"] == "worker_lost"


def test_a_sweeper_whose_own_beat_is_stale_recovers_nothing(dsn: str, repo: TaskRepository) -> None:
    """The gap no check in the coordinator can see: frozen after it read its own
    connectivity and before its statement ran. The statement asks the database whether
    the sweeper itself beat a moment ago; one that was frozen did not."""
    query(dsn, "INSERT INTO nodes (id, kind, host, pid, address, capacity, last_heartbeat_at)"
               " VALUES ('worker-gone', 'worker', 'test', 1, 'nowhere:1', 8,"
               " now() - interval '1 minute'), ('sweeper', 'coordinator', 'test', 2, NULL,"
               " 0, now() - interval '10 seconds')")
    [task] = query(dsn, "INSERT INTO tasks (command, scheduled_at, picked_at, started_at,"
                        " attempt, worker_id, claim_token) VALUES ('sleep 600', now(), now(),"
                        " now(), 1, 'worker-gone', gen_random_uuid()) RETURNING id")
    query(dsn, "INSERT INTO task_attempts (task_id, attempt, worker_id, started_at)"
               " VALUES (%s, 1, 'worker-gone', now())", (task["id"],))
    assert repo.recover_lost_runs(ttl_s=TTL_S, sweeper="sweeper", fresh_s=2.0) == []
    query(dsn, "UPDATE nodes SET last_heartbeat_at = now() WHERE id = 'sweeper'")
    [lost] = repo.recover_lost_runs(ttl_s=TTL_S, sweeper="sweeper", fresh_s=2.0)
    assert lost.task_id == task["id"]
