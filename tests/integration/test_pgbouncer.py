"""A cluster through PgBouncer in transaction mode, as real fleets run it: every node's
pool connects through the pooler (no prepared statements: a statement prepared on one
server connection is unknown on the next), and what needs a session (migrations, the
coordinators' LISTEN) connects directly through CHRONOSYNC_SESSION_DSN. Tasks run once,
cron ticks are made once, a killed worker's task is recovered, and many client
connections share a few server connections: 50 workers on 20. (The pooler itself is in
harness.py; make test-pgbouncer runs the core scenario files through it too.)"""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import Cluster, log_of, node_id, pgbouncer, running_cluster, wait_for

SERVER_CONNECTIONS = 5
WORKERS = 8
# The fleet test: many workers, each with its own pool, on few server connections.
FLEET_WORKERS = 50
FLEET_SERVER_CONNECTIONS = 20


@pytest.fixture
def pooled_cluster(dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    with pgbouncer(dsn, pool_size=SERVER_CONNECTIONS) as pooler, \
            running_cluster(dsn, tmp_path, node_dsn=pooler.dsn) as cluster:
        yield cluster


def server_connections(dsn: str) -> int:
    """Client backends on the test's database, but this probe's own."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
    assert row is not None
    return row[0]


def test_a_cluster_through_pgbouncer_runs_once_and_recovers(
    pooled_cluster: Cluster, dsn: str,
) -> None:
    cluster = pooled_cluster
    scheduler = cluster.start("scheduler")
    coordinators = [cluster.start("coordinator") for _ in range(2)]
    workers = [cluster.start("worker", CHRONOSYNC_WORKER_CAPACITY="2")
               for _ in range(WORKERS)]
    cluster.wait_ready(coordinators=2, workers=WORKERS)
    # Each node says what it needs a session for, and that it opens it directly.
    pooled = "CHRONOSYNC_DSN is taken to be a transaction pooler"
    for node, needs in [(scheduler, "its migrations at start-up and opens"),
                        (workers[0], "its migrations at start-up and opens"),
                        (coordinators[0], "its migrations at start-up and its LISTEN")]:
        said = log_of(node)
        assert pooled in said and f"session for {needs}" in said, node.name
        assert "opens it on CHRONOSYNC_SESSION_DSN" in said, node.name

    shared = Path(tempfile.mkdtemp(prefix="chronosync-pgbouncer-test-"))
    shared.chmod(0o777)  # the commands may run as another user
    started = shared / "long-started"
    _, lost = cluster.http("POST", "/schedule", {"command": f"touch {started}; sleep 60"})
    _, job = cluster.http("POST", "/schedule", {"command": "true", "cron": "* * * * * *"})
    ids = [cluster.http("POST", "/schedule", {"command": f"echo {i}"})[1]["id"]
           for i in range(60)]
    wait_for(started.exists, timeout=30, what="the long task to start")
    running_on = cluster.task(lost["id"])["worker_id"]
    [victim] = [w for w in workers if node_id(cluster, w) == running_on]
    victim.signal(signal.SIGKILL)

    for task_id in ids:
        done = cluster.wait_task(task_id, ("succeeded", "failed"), timeout=60)
        assert (done["status"], done["attempt"]) == ("succeeded", 1), done
    assert cluster.wait_task(lost["id"], ("failed",), timeout=30)["error"] == "worker_lost"

    # Many client connections (every node's pool), few server connections.
    assert server_connections(dsn) <= SERVER_CONNECTIONS + 2, "pooled: 5, plus 2 LISTENs"
    wait_for(lambda: len(cluster.http(
        "GET", f"/tasks?job_id={job['id']}&status=succeeded")[1]["tasks"]) >= 3,
        timeout=30, what="the job to tick through the pooler")
    shutil.rmtree(shared, ignore_errors=True)
    duplicates = cluster.query(
        "SELECT scheduled_at FROM tasks WHERE job_id = %s GROUP BY scheduled_at"
        " HAVING count(*) > 1", (job["id"],))
    assert duplicates == []


def test_fifty_workers_share_twenty_server_connections_and_run_each_task_once(
    dsn: str, tmp_path: Path,
) -> None:
    """A fleet's worth of nodes through one pooler: every worker registers and runs tasks
    through it, each task runs once, and the server sees at most the pool's connections
    (plus the coordinators' direct LISTENs), never one per node."""
    # Fifty processes on a small machine: slower beats and a longer liveness horizon, so
    # that start-up load does not read as dead workers; one slot each, so that tasks
    # spread over many of them.
    slow = {"CHRONOSYNC_HEARTBEAT_S": "1", "CHRONOSYNC_NODE_TTL_S": "15"}
    with pgbouncer(dsn, pool_size=FLEET_SERVER_CONNECTIONS) as pooler, \
            running_cluster(dsn, tmp_path, node_dsn=pooler.dsn) as cluster:
        cluster.processes._env.update(slow)
        cluster.start("scheduler")
        coordinators = [cluster.start("coordinator") for _ in range(2)]
        workers = [cluster.start("worker", CHRONOSYNC_WORKER_CAPACITY="1",
                                 CHRONOSYNC_POOL_SIZE="2")
                   for _ in range(FLEET_WORKERS)]
        peak = 0

        def registered() -> bool:
            nonlocal peak
            peak = max(peak, pooler.server_connections())
            for node in workers:
                assert node.alive, f"{node.name} exited: {node.last_words()}"
            alive = cluster.query(
                "SELECT count(*) AS n FROM nodes WHERE kind = 'worker'"
                " AND stopped_at IS NULL AND last_heartbeat_at > now() - interval '15 s'")
            return alive[0]["n"] == FLEET_WORKERS

        wait_for(registered, timeout=150, interval=0.5, what="every worker to register")
        assert {node_id(cluster, w) for w in workers} == {
            r["id"] for r in cluster.query("SELECT id FROM nodes WHERE kind = 'worker'")}
        clients = pooler.client_connections()
        assert clients >= FLEET_WORKERS, f"{clients} clients: one pool per worker at least"

        ids = [cluster.http("POST", "/schedule", {"command": f"echo {i}"})[1]["id"]
               for i in range(150)]

        def all_done() -> bool:
            nonlocal peak
            peak = max(peak, pooler.server_connections())
            done = cluster.query("SELECT count(*) AS n FROM tasks WHERE completed_at IS NOT"
                                 " NULL OR failed_at IS NOT NULL")
            return done[0]["n"] == len(ids)

        wait_for(all_done, timeout=120, interval=0.5, what="the tasks to finish")
        for task_id in ids:
            task = cluster.task(task_id)
            assert (task["status"], task["attempt"]) == ("succeeded", 1), task
        ran_on = {r["worker_id"] for r in cluster.query(
            "SELECT DISTINCT worker_id FROM tasks")}
        assert len(ran_on) > 1, "the tasks spread over the fleet"

        assert 0 < peak <= FLEET_SERVER_CONNECTIONS, peak
        # The server's own count: the pooler's connections and the coordinators' LISTENs.
        assert server_connections(dsn) <= FLEET_SERVER_CONNECTIONS + len(coordinators)
        print(f"{FLEET_WORKERS} workers, {clients} client connections to the pooler, "
              f"at most {peak} server connections")
        # No statement met a server connection that lacked what it was prepared on.
        for node in [*coordinators, *workers]:
            assert 'prepared statement "' not in log_of(node), node.name
