"""What integration tests drive: real service processes against a fresh database, with
liveness timings shrunk so failures show in seconds, not minutes, and polling helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from chronocore.db import SessionTimeouts
from chronocore.migrate import apply_migrations
from chronosync_dev.devcluster import NodeProcess, ProcessCluster
from chronosync_dev.pgcluster import (
    FAST_TEST_SETTINGS,
    LocalCluster,
    PostgresNotFound,
    _server_user,
    free_port,
)

T = TypeVar("T")

FAST_TIMINGS = {
    "CHRONOSYNC_HEARTBEAT_S": "0.2",
    "CHRONOSYNC_NODE_TTL_S": "1.5",
    "CHRONOSYNC_KILL_GRACE_S": "1",
    "CHRONOSYNC_WORKER_CAPACITY": "8",
    "CHRONOSYNC_SHUTDOWN_GRACE_S": "5",
    # The tests run as root (CI does) and their commands write into root's temp dirs.
    "CHRONOSYNC_ALLOW_ROOT": "1",
}


def wait_for(condition: Callable[[], T], *, timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll until ``condition()`` is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def http(base: str, method: str, path: str, body: Any = None, *,
         raw: bytes | None = None, headers: dict[str, str] | None = None,
         ) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body or None)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        req.add_header(key, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    return status, (json.loads(payload) if payload else None)


def query(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    """One statement on its own autocommit connection; rows as dicts ([] if none)."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


class Cluster:
    """A ProcessCluster plus what tests ask of it: the API URL and the database.

    ``dsn`` is the database's own address, which the test's queries use. ``node_dsn``,
    when given, is where the nodes' pools connect instead (a transaction pooler in front
    of it): the nodes then get ``dsn`` as CHRONOSYNC_SESSION_DSN for what needs a session.
    """

    def __init__(self, *, dsn: str, log_dir: Path, node_dsn: str | None = None) -> None:
        self.dsn = dsn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**FAST_TIMINGS, "CHRONOSYNC_HTTP_ADDR": f"127.0.0.1:{self.port}"}
        if node_dsn is not None:
            env["CHRONOSYNC_SESSION_DSN"] = dsn
            set_session_timeouts_on_database(dsn)
        self.processes = ProcessCluster(dsn=node_dsn or dsn, log_dir=log_dir, env=env)

    def start(self, kind: str, **env: str) -> NodeProcess:
        return self.processes.start(kind, env=env)

    def start_default(self, *, coordinators: int = 2, workers: int = 2) -> None:
        self.start("scheduler")
        for _ in range(coordinators):
            self.start("coordinator")
        for _ in range(workers):
            self.start("worker")
        self.wait_ready(coordinators=coordinators, workers=workers)

    def wait_ready(self, *, coordinators: int, workers: int) -> None:
        def ready() -> bool:
            try:
                status, _ = self.http("GET", "/readyz")
            except OSError:
                return False
            if status != 200:
                return False
            alive = self.query(
                "SELECT kind, count(*) AS n FROM nodes WHERE stopped_at IS NULL"
                " AND last_heartbeat_at > now() - interval '1 second' GROUP BY kind"
            )
            counts = {r["kind"]: r["n"] for r in alive}
            return (counts.get("coordinator", 0) >= coordinators
                    and counts.get("worker", 0) >= workers)

        wait_for(ready, timeout=30, what="the cluster to be ready")

    def http(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return http(self.url, method, path, body, **kw)

    def query(self, statement: str, params: Any = None) -> list[dict[str, Any]]:
        return query(self.dsn, statement, params)

    def task(self, task_id: int) -> dict[str, Any]:
        status, body = self.http("GET", f"/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait_task(self, task_id: int, statuses: tuple[str, ...], *,
                  timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["status"] in statuses else None

        return wait_for(reached, timeout=timeout, what=f"task {task_id} to be {statuses}")

    def stop(self) -> None:
        self.processes.stop()


def set_session_timeouts_on_database(dsn: str) -> None:
    """What the README says to do behind a transaction pooler, which drops the options
    that would set them per connection: the nodes' session timeouts set on the database
    (the test's own; on the role in production)."""
    timeouts = SessionTimeouts()
    with psycopg.connect(dsn, autocommit=True) as conn:
        name = conn.info.dbname
        for setting, seconds in [("lock_timeout", timeouts.lock_s),
                                 ("idle_in_transaction_session_timeout",
                                  timeouts.idle_in_transaction_s),
                                 ("statement_timeout", timeouts.statement_s)]:
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                sql.Identifier(name), sql.Identifier(setting),
                sql.Literal(f"{round(seconds * 1000)}ms")))


@contextmanager
def running_cluster(dsn: str, tmp_path: Path, *,
                    node_dsn: str | None = None) -> Iterator[Cluster]:
    """A Cluster on ``dsn`` (its nodes on ``node_dsn`` if given, see Cluster) logging
    under ``tmp_path``; its nodes are stopped on the way out, and their logs printed
    (pytest shows them when the test failed)."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    running = Cluster(dsn=dsn, log_dir=log_dir, node_dsn=node_dsn)
    try:
        yield running
    finally:
        running.stop()
        print(running.processes.logs())


def node_id(cluster: Cluster, node: NodeProcess) -> str:
    """The registry id of a started node process (waits for it to register)."""
    def registered() -> str | None:
        rows = cluster.query("SELECT id FROM nodes WHERE pid = %s ORDER BY started_at DESC",
                             (node.pid,))
        return rows[0]["id"] if rows else None

    return wait_for(registered, timeout=30, what=f"{node.name} to register")


def log_of(node: NodeProcess) -> str:
    assert node.log_path is not None
    return node.log_path.read_text(errors="replace")


def process_gone(pid: int) -> bool:
    """The process no longer runs (it may linger as a zombie until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def tail(path: Path, lines: int = 60) -> str:
    """The end of a log file, for a failing test's report."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(unreadable: {exc})"


@contextmanager
def own_postgres(prefix: str, settings: dict[str, str] | None = None,
                 ) -> Iterator[LocalCluster]:
    """A migrated PostgreSQL of the test's own (one it may stop, kill or cut off);
    stopped at the end, with its log printed for the report."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    base.chmod(0o755)  # under root the server runs as an unprivileged user
    server = LocalCluster(datadir=base / "pgdata",
                          settings={**FAST_TEST_SETTINGS, **(settings or {})})
    try:
        try:
            server.start()
        except PostgresNotFound as exc:
            pytest.skip(f"no PostgreSQL server binaries to run a cluster of our own: {exc}")
        apply_migrations(server.dsn())
        yield server
    finally:
        server.stop()
        print(f"===== postgres.log =====\n{tail(server.log_path)}")
        shutil.rmtree(base, ignore_errors=True)


PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
# CHRONOSYNC_TEST_THROUGH_PGBOUNCER=1: the ``cluster`` fixture's nodes connect through
# PgBouncer in transaction mode (make test-pgbouncer).
THROUGH_PGBOUNCER = os.environ.get("CHRONOSYNC_TEST_THROUGH_PGBOUNCER", "") not in ("", "0")
# Server connections the pooler opens for the cluster's nodes: fewer than they have clients.
PGBOUNCER_POOL_SIZE = 20


@dataclass(frozen=True)
class PgBouncer:
    """A running PgBouncer: ``dsn`` reaches the database through it in transaction mode,
    ``admin_dsn`` its admin console (SHOW POOLS, SHOW SERVERS, ...)."""

    dsn: str
    admin_dsn: str

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW what`` on the admin console, which speaks only the simple protocol."""
        with psycopg.connect(self.admin_dsn, autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn:
            cur = conn.cursor(row_factory=dict_row)
            cur.execute(f"SHOW {what}")
            return cur.fetchall()

    def server_connections(self) -> int:
        """Server connections it holds to the database now, in use or idle."""
        return len([s for s in self.show("SERVERS") if s["database"] != "pgbouncer"])

    def client_connections(self) -> int:
        """Client connections to the database now (its admin console's are not counted)."""
        return len([c for c in self.show("CLIENTS") if c["database"] != "pgbouncer"])


@contextmanager
def pgbouncer(dsn: str, *, pool_size: int = PGBOUNCER_POOL_SIZE) -> Iterator[PgBouncer]:
    """Debian's PgBouncer in transaction mode in front of ``dsn``'s server, at most
    ``pool_size`` server connections per database; its log printed on the way out."""
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
admin_users = {server["user"]}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 2000
ignore_startup_parameters = extra_float_digits,options
logfile = {directory}/pgbouncer.log
""")
    user = _server_user() if os.geteuid() == 0 else None  # it refuses to run as root
    if user is not None:
        for path in (directory, *directory.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    kw: dict[str, Any] = {} if user is None else {
        "user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with open(directory / "stderr.log", "wb") as err:
        proc = subprocess.Popen([PGBOUNCER, str(directory / "pgbouncer.ini")],
                                stdout=err, stderr=subprocess.STDOUT, **kw)
    pooled = make_conninfo(dsn, port=port, password=server.get("password"))
    running = PgBouncer(dsn=pooled, admin_dsn=make_conninfo(pooled, dbname="pgbouncer"))

    def answers() -> bool:
        try:
            with psycopg.connect(pooled, connect_timeout=2) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    try:
        wait_for(answers, timeout=20, what="pgbouncer to accept connections")
        yield running
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for log in (directory / "stderr.log", directory / "pgbouncer.log"):
            print(f"===== pgbouncer {log.name} =====")
            print(tail(log, 80) if log.exists() else f"(no {log.name})")
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer at all
    body: Any  # decoded JSON, or a description of what came instead
    began: float  # time.monotonic()
    ended: float

    @property
    def seconds(self) -> float:
        return self.ended - self.began


def bounded_request(url: str, method: str, path: str, body: Any = None, *,
                    timeout: float) -> Answer:
    """One request with a bounded wait; never raises for what the server does."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    began = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
        exc.close()
    except OSError as exc:
        return Answer(None, f"no answer: {exc!r}", began, time.monotonic())
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = f"not JSON: {raw[:200]!r}"
    return Answer(status, decoded, began, time.monotonic())


def launch_until_ready(procs: dict[str, subprocess.Popen[bytes]],
                       argv: dict[str, list[str]], ready: Callable[[str], Path], *,
                       what: str) -> None:
    """Start ``python ARGS`` for each name (into ``procs``, so the caller's cleanup reaps
    them) and wait until each has touched its ready file; fail if one exits first."""
    for name, args in argv.items():
        procs[name] = subprocess.Popen([sys.executable, *args],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def all_ready() -> bool:
        for name, proc in procs.items():
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"{name} exited early ({proc.returncode}): {err.decode()}")
        return all(ready(name).exists() for name in argv)

    wait_for(all_ready, timeout=30, what=what)


def unprivileged_user() -> tuple[int, int]:
    """An unprivileged account of the test's own (made if missing)."""
    name = "chronosync-test-node"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], capture_output=True, check=False)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            pytest.skip(f"cannot create the user {name} to run nodes as")
    return entry.pw_uid, entry.pw_gid


def as_unprivileged_user() -> list[str]:
    """A command-line prefix that runs ``python ARGS`` as the test's user: with a Python
    that user may execute (this one may live in root's home) and these packages."""
    uid, gid = unprivileged_user()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to start nodes as another user")
    python = next((p for p in (sys.executable, f"/usr/bin/python3.{sys.version_info[1]}")
                   if _runs_as(setpriv, uid, gid, p)), None)
    if python is None:
        pytest.skip(f"no Python {sys.version_info[:2]} that user {uid} may execute")
    paths = [str(Path(p).parent) for name in ("chronocore", "chronosync_dev",
                                               "chronosync_scheduler",
                                               "chronosync_coordinator", "chronosync_worker")
             for p in importlib.util.find_spec(name).submodule_search_locations]
    paths += [p for p in sys.path if p.endswith("site-packages")]
    # The cluster runs `PREFIX sys.executable -u SCRIPT`: the shell swaps the Python.
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            "env", f"PYTHONPATH={':'.join(paths)}",
            "/bin/sh", "-c", f'shift; exec {python} "$@"', "sh"]


def _runs_as(setpriv: str, uid: int, gid: int, python: str) -> bool:
    probe = subprocess.run([setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
                            "--", python, "-c", "import subprocess, sys; "
                            "subprocess.run([sys.executable, '-c', ''], check=True)"],
                           capture_output=True, timeout=60, check=False)
    return probe.returncode == 0
