"""A cluster through PgBouncer in transaction mode, as real fleets run it: every node's
pool connects through the pooler (no prepared statements: a statement prepared on one
server connection is unknown on the next), and what needs a session (migrations, the
coordinators' LISTEN) connects directly through CHRONOSYNC_SESSION_DSN. Tasks run once,
cron ticks are made once, a killed worker's task is recovered, and many client
connections share a few server connections."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import Cluster, free_port, node_id, running_cluster, wait_for
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from chronosync_dev.pgcluster import _server_user

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
SERVER_CONNECTIONS = 5
WORKERS = 8


@pytest.fixture
def pooler(dsn: str) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the test's database; its conninfo."""
    if not os.access(PGBOUNCER, os.X_OK):
        # CI installs it, so there its absence is a failure; a laptop with only Python
        # (make test with the embedded PostgreSQL) skips the test, naming the package.
        reason = "pgbouncer is not installed (Debian's pgbouncer package; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    server = conninfo_to_dict(dsn)
    port = free_port()
    # Its own directory, reachable by the unprivileged user it runs as under root.
    directory = Path(tempfile.mkdtemp(prefix="chronosync-pgbouncer-"))
    directory.chmod(0o755)
    target = " ".join(f"{k}={server[k]}" for k in ("host", "port", "password")
                      if server.get(k))
    (directory / "userlist.txt").write_text(
        f'"{server["user"]}" "{server.get("password", "")}"\n')
    (directory / "pgbouncer.ini").write_text(f"""\
[databases]
* = {target}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = {"plain" if server.get("password") else "trust"}
auth_file = {directory}/userlist.txt
pool_mode = transaction
default_pool_size = {SERVER_CONNECTIONS}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
""")
    user = _server_user() if os.geteuid() == 0 else None  # it refuses to run as root
    if user is not None:
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    kw = {} if user is None else {"user": user.pw_uid, "group": user.pw_gid,
                                  "extra_groups": []}
    with open(directory / "stderr.log", "wb") as err:
        proc = subprocess.Popen([PGBOUNCER, str(directory / "pgbouncer.ini")],
                                stdout=err, stderr=subprocess.STDOUT, **kw)
    pooled = make_conninfo(dsn, port=port, password=server.get("password"))

    def answers() -> bool:
        try:
            with psycopg.connect(pooled, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    try:
        wait_for(answers, timeout=20, what="pgbouncer to accept connections")
        yield pooled
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for log in (directory / "stderr.log", directory / "pgbouncer.log"):
            print(log.read_text()[-5000:] if log.exists() else f"(no {log.name})")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pooled_cluster(pooler: str, dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(pooler, tmp_path) as cluster:
        cluster.processes._env["CHRONOSYNC_SESSION_DSN"] = dsn
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
    cluster.start("scheduler")
    for _ in range(2):
        cluster.start("coordinator")
    workers = [cluster.start("worker", CHRONOSYNC_WORKER_CAPACITY="2")
               for _ in range(WORKERS)]
    cluster.wait_ready(coordinators=2, workers=WORKERS)
    assert "CHRONOSYNC_DSN is taken to be a transaction pooler" in \
        workers[0].log_path.read_text()

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
