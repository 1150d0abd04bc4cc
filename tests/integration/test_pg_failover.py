"""PostgreSQL failover: the primary crashes, its synchronous standby is promoted, and the
nodes follow it through their multi-host DSN (``target_session_attrs=read-write``).

The test builds a primary and a synchronous streaming standby (``pg_basebackup -R``,
``application_name=standby1``) from the local binaries, starts 1 scheduler, 2
coordinators and 2 workers on ``host=127.0.0.1,127.0.0.1 port=P1,P2``, and posts a
steady mixed load (at_most_once and at_least_once, some commands still running at the
crash). Then it SIGKILLs the primary and everything it started, waits a moment (a
failover manager's detection time: no write may be acknowledged then; longer than the
nodes' TTL, shorter than the pool's wait), promotes the standby and keeps the load going.

Checked afterwards on the new primary: every task acknowledged with 201 is there and
ends (succeeded; an at_most_once one caught starting at the crash may fail, never run
twice); no at_most_once command started twice; every at_least_once task succeeded;
no live worker was judged dead (none dies here), though a command still running when
the gap outlasted its lease was killed by its own worker (fenced: ``worker_lost``, an
at_most_once task failed, an at_least_once one run again); the same node processes serve again
(/readyz 200, a new task runs). It prints the figures: acknowledged, lost, duplicated,
and the time to recover.

``synchronous_commit=on`` with ``synchronous_standby_names='standby1'`` is what makes
"acknowledged means on the standby" true: with the suite's FAST settings
(``synchronous_commit=off``) an acknowledged write may die with the primary.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import (
    FAST_TIMINGS,
    Answer,
    Cluster,
    bounded_request,
    log_of,
    running_cluster,
    tail,
    wait_for,
)
from psycopg.rows import dict_row

from chronocore import db
from chronocore.migrate import apply_migrations
from chronosync_dev.pgcluster import FAST_TEST_SETTINGS, LocalCluster, PostgresNotFound

pytestmark = pytest.mark.slow

STANDBY_NAME = "standby1"
# The suite's fast settings, but with commits waiting for the synchronous standby: the
# guarantee rests on synchronous_commit=on (fsync may stay off: the standby process
# survives the crash, and with it what the OS holds of its WAL).
PRIMARY_SETTINGS = {
    **FAST_TEST_SETTINGS,
    "wal_level": "replica",
    "max_wal_senders": "5",
    "synchronous_standby_names": STANDBY_NAME,
    "synchronous_commit": "on",
}
# Submissions per second, and for how long before the crash and after the promotion.
RATE_PER_S = 20.0
LOAD_THREADS = 4
LOAD_BEFORE_S = 4.0
LOAD_AFTER_S = 4.0
# Between the crash and the promotion, as a failover manager would take to notice: longer
# than the nodes' TTL (every heartbeat goes stale) and shorter than the pool's wait (a
# heartbeat begun at the crash still gets through to the new primary), the window where
# a sweeper that did not notice the outage would judge live workers dead.
KILL_TO_PROMOTE_S = (float(FAST_TIMINGS["CHRONOSYNC_NODE_TTL_S"]) + db.POOL_WAIT_S) / 2
# One task in SLEEPER_EVERY writes its marker line, then sleeps this long, so some are
# running at the crash and end only once the new primary serves.
SLEEPER_EVERY = 5
SLEEP_S = 2
# A request gets the pool's wait for a connection to answer 503, plus slack on a
# loaded, shared 2-core machine.
REQUEST_TIMEOUT_S = db.POOL_WAIT_S + 8.0
# Deadlines (generous: other tests share the machine).
SYNC_TIMEOUT_S = 30.0
RECOVER_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 45.0
# What an acknowledged at_most_once task may fail with: the crash caught its worker
# recording the start (it may have been committed, so the command is never spawned).
# worker_lost only when its own worker fenced the run (the gap outlasted the run's
# lease): no worker dies here, and a database outage must make no live worker look
# dead to a sweeper (README, "Dead nodes are noticed in seconds").
CRASH_ERRORS = ("spawn: database unreachable",)


def request(url: str, method: str, path: str, body: Any = None) -> Answer:
    return bounded_request(url, method, path, body, timeout=REQUEST_TIMEOUT_S)


@dataclass(frozen=True)
class Post:
    answer: Answer
    name: str
    delivery: str
    sleeper: bool

    @property
    def task_id(self) -> int | None:
        if self.answer.status == 201 and isinstance(self.answer.body, dict):
            return int(self.answer.body["id"])
        return None


class Load:
    """Posts tasks at RATE_PER_S in all, from LOAD_THREADS threads (each at its share of
    the rate, never faster to catch up: a request waiting out the outage holds up only
    its own thread), until stopped."""

    def __init__(self, url: str, marker: Path) -> None:
        self._url = url
        self._marker = marker
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._count = 0
        self.posts: list[Post] = []
        self._threads = [threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
                         for i in range(LOAD_THREADS)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"

    def _body(self) -> tuple[dict[str, Any], str, bool]:
        with self._lock:
            n = self._count
            self._count += 1
        delivery = "at_least_once" if n % 2 else "at_most_once"
        sleeper = n % SLEEPER_EVERY == SLEEPER_EVERY - 1
        command = f'echo "$CHRONOSYNC_TASK_ID $CHRONOSYNC_ATTEMPT" >> {self._marker}'
        if sleeper:
            command += f"; sleep {SLEEP_S}"
        return {"command": command, "delivery": delivery, "name": f"load-{n}"}, delivery, sleeper

    def _run(self) -> None:
        interval = LOAD_THREADS / RATE_PER_S
        next_at = time.monotonic()
        while not self._stop.is_set():
            self._stop.wait(max(0.0, next_at - time.monotonic()))
            if self._stop.is_set():
                break
            body, delivery, sleeper = self._body()
            post = Post(request(self._url, "POST", "/schedule", body), body["name"],
                        delivery, sleeper)
            with self._lock:
                self.posts.append(post)
            next_at = max(next_at + interval, time.monotonic())


class ReadyProbe:
    """GET /readyz every 0.1 s on its own thread, keeping every answer."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._stop = threading.Event()
        self.answers: list[Answer] = []
        self._thread = threading.Thread(target=self._run, name="readyz", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=REQUEST_TIMEOUT_S + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.answers.append(request(self._url, "GET", "/readyz"))
            self._stop.wait(0.1)


def _query(dsn: str, statement: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row,
                         connect_timeout=5) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


@dataclass
class Replicated:
    primary: LocalCluster
    standby: LocalCluster

    @property
    def dsn(self) -> str:
        """Both servers; libpq takes the first that accepts writes."""
        return (f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port}"
                f" user=postgres password={self.primary.password} dbname=postgres"
                " target_session_attrs=read-write"
                " connect_timeout=2")


@pytest.fixture
def replicated_postgres() -> Iterator[Replicated]:
    """A primary and its synchronous streaming standby, migrated through the primary;
    both stopped (if still up) at the end."""
    base = Path(tempfile.mkdtemp(prefix="chronosync-pgfailover-"))
    base.chmod(0o755)  # under root the servers run as an unprivileged user
    primary = LocalCluster(datadir=base / "primary", settings=PRIMARY_SETTINGS)
    standby: LocalCluster | None = None
    try:
        try:
            primary.start()
        except PostgresNotFound as exc:
            pytest.skip(f"no PostgreSQL server binaries to run a primary and standby: {exc}")
        standby = LocalCluster.standby_of(primary, datadir=base / "standby",
                                          application_name=STANDBY_NAME)
        standby.start()

        def synchronous() -> bool:
            rows = _query(primary.dsn(), "SELECT application_name, state, sync_state"
                                         " FROM pg_stat_replication")
            return any(r["application_name"] == STANDBY_NAME and r["sync_state"] == "sync"
                       and r["state"] == "streaming" for r in rows)

        wait_for(synchronous, timeout=SYNC_TIMEOUT_S, interval=0.1,
                 what=f"{STANDBY_NAME} to stream as the synchronous standby")
        apply_migrations(primary.dsn())
        yield Replicated(primary, standby)
    finally:
        for server in (primary, standby):
            if server is None:
                continue
            try:
                server.stop()
            finally:
                print(f"===== {server.datadir.name} postgres.log =====\n"
                      f"{tail(server.log_path)}")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def failover_cluster(replicated_postgres: Replicated, tmp_path: Path) -> Iterator[Cluster]:
    """Nodes on the multi-host DSN; stopped before either PostgreSQL is."""
    with running_cluster(replicated_postgres.dsn, tmp_path) as running:
        yield running


@pytest.fixture
def ready_probe(failover_cluster: Cluster) -> Iterator[ReadyProbe]:
    """/readyz polled throughout the test (started by it); stopped before the nodes."""
    probe = ReadyProbe(failover_cluster.url)
    try:
        yield probe
    finally:
        probe.stop()


def seconds(a: datetime, b: datetime) -> float:
    return (b - a).total_seconds()


def test_nodes_follow_a_promoted_synchronous_standby_and_lose_no_acknowledged_task(
    replicated_postgres: Replicated, failover_cluster: Cluster, ready_probe: ReadyProbe,
    tmp_path: Path,
) -> None:
    pg, cluster = replicated_postgres, failover_cluster
    cluster.start_default(coordinators=2, workers=2)
    nodes = list(cluster.processes.nodes)
    pids = {node.name: node.pid for node in nodes}
    marker = tmp_path / "started.txt"
    marker.touch()

    load = Load(cluster.url, marker)
    probe = ready_probe
    load.start()
    probe.start()
    try:
        time.sleep(LOAD_BEFORE_S)

        def some_running() -> int:
            return cluster.query(
                "SELECT count(*) AS n FROM tasks WHERE started_at IS NOT NULL"
                " AND completed_at IS NULL AND failed_at IS NULL")[0]["n"]

        try:
            wait_for(some_running, timeout=15, interval=0.05,
                     what="some task to be running at the crash")
        except BaseException:
            print("answers so far:", Counter(p.answer.status for p in load.posts),
                  [p.answer for p in load.posts[:3]])
            print("tasks:", cluster.query(
                "SELECT task_status(picked_at, started_at, completed_at, failed_at,"
                " cancelled_at, attempt) AS status, count(*) AS n FROM tasks GROUP BY 1"))
            raise

        # The crash: the primary and every process it started, SIGKILLed.
        killed_db_at = _query(pg.primary.dsn(), "SELECT now() AS now")[0]["now"]
        running_at_kill = some_running()
        killed_at = time.monotonic()
        pg.primary.kill()
        kill_took = time.monotonic() - killed_at

        time.sleep(max(0.0, killed_at + KILL_TO_PROMOTE_S - time.monotonic()))
        promoting_at = time.monotonic()
        pg.standby.promote()
        promoted_at = time.monotonic()
        new_primary = _query(pg.standby.dsn(), "SELECT now() AS now,"
                             " pg_is_in_recovery() AS in_recovery")[0]
        assert not new_primary["in_recovery"], "the standby is still in recovery"
        promoted_db_at = new_primary["now"]

        time.sleep(max(0.0, promoted_at + LOAD_AFTER_S - time.monotonic()))
    finally:
        load.stop()

    # Ready again, through the same processes.
    wait_for(lambda: request(cluster.url, "GET", "/readyz").status == 200,
             timeout=RECOVER_TIMEOUT_S, what="/readyz to answer 200 after the promotion")
    probe.stop()
    where = cluster.query("SELECT inet_server_port() AS port,"
                          " pg_is_in_recovery() AS in_recovery")[0]
    assert where == {"port": pg.standby.port, "in_recovery": False}, where
    cluster.wait_ready(coordinators=2, workers=2)

    posts = load.posts
    acked = {p.task_id: p for p in posts if p.task_id is not None}
    acked_before = [i for i, p in acked.items() if p.answer.ended <= killed_at]
    acked_after = [i for i, p in acked.items() if p.answer.began >= promoting_at]
    statuses = Counter(p.answer.status for p in posts)

    # Nothing may be acknowledged while no server accepts writes (no false 201), nor
    # may the API call itself ready then.
    gap = (killed_at + kill_took, promoting_at)
    false_201 = [p for p in posts if p.answer.status == 201
                 and p.answer.began >= gap[0] and p.answer.ended <= gap[1]]
    assert not false_201, f"writes acknowledged while no primary existed: {false_201}"
    false_ready = [a for a in probe.answers if a.status == 200
                   and a.began >= gap[0] and a.ended <= gap[1]]
    assert not false_ready, f"/readyz said 200 while no primary existed: {false_ready}"
    other = {s: n for s, n in statuses.items() if s not in (201, 503, None)}
    assert not other, f"unexpected answers to POST /schedule: {other} " + str(
        [p.answer for p in posts if p.answer.status in other][:5])
    assert acked_before, "no task acknowledged before the crash"
    assert acked_after, "no task acknowledged after the promotion"

    # Every acknowledged task is on the new primary and ends.
    ids = sorted(acked)

    def unfinished() -> list[dict[str, Any]]:
        return cluster.query(
            "SELECT id, delivery, attempt, picked_at, started_at, error FROM tasks"
            " WHERE id = ANY(%s) AND completed_at IS NULL AND failed_at IS NULL"
            " AND cancelled_at IS NULL ORDER BY id", (ids,))

    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while (left := unfinished()) and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = {r["id"]: r for r in cluster.query(
        "SELECT id, delivery, attempt, started_at, completed_at, failed_at, cancelled_at,"
        " error, worker_id FROM tasks WHERE id = ANY(%s)", (ids,))}
    lost = sorted(set(ids) - set(rows))

    # What the commands themselves saw: one "<task id> <attempt>" line per start.
    lines = [tuple(map(int, line.split())) for line in marker.read_text().splitlines()
             if line.strip()]
    starts = Counter(task_id for task_id, _ in lines)
    pair_starts = Counter(lines)
    delivery_of = {r["id"]: r["delivery"] for r in cluster.query(
        "SELECT id, delivery FROM tasks WHERE id = ANY(%s)",
        (sorted(starts),))}
    duplicated = sorted(
        {i for i, n in starts.items() if n > 1 and delivery_of.get(i) == "at_most_once"}
        | {i for (i, _), n in pair_starts.items() if n > 1})

    # Not acknowledged yet stored (committed, the answer lost with the primary): allowed,
    # and counted.
    unacked = [p.name for p in posts if p.task_id is None]
    stored_unacked = cluster.query("SELECT id FROM tasks WHERE name = ANY(%s)", (unacked,))

    failed = {i: r for i, r in rows.items() if r["completed_at"] is None
              and r["failed_at"] is not None}
    by_error = Counter(r["error"] for r in failed.values())

    # Recovery times: by the test's clock from the kill, and by the database clock to
    # the first task completed on the new primary.
    first_ready = min((a.ended for a in probe.answers
                       if a.status == 200 and a.began >= gap[0]), default=None)
    first_201 = min((p.answer.ended for p in posts
                     if p.task_id is not None and p.answer.began >= killed_at), default=None)
    # Nothing can complete while no server accepts writes: a completion later than half
    # that gap after the kill was written by the new primary.
    first_done = cluster.query(
        "SELECT min(completed_at) AS at FROM tasks WHERE completed_at > %s",
        (killed_db_at + timedelta(seconds=KILL_TO_PROMOTE_S / 2),))[0]["at"]
    recover = {
        "readyz_200_s": None if first_ready is None else round(first_ready - killed_at, 2),
        "first_201_s": None if first_201 is None else round(first_201 - killed_at, 2),
        "first_completion_s": (None if first_done is None
                               else round(seconds(killed_db_at, first_done), 2)),
    }
    figures = {
        "posted": len(posts),
        "acknowledged": len(acked),
        "acknowledged_before_kill": len(acked_before),
        "acknowledged_after_promotion": len(acked_after),
        "answers": {str(k): v for k, v in sorted(statuses.items(), key=str)},
        "running_at_kill": running_at_kill,
        "stored_without_201": len(stored_unacked),
        "lost": len(lost),
        "unfinished": len(left),
        "duplicated": len(duplicated),
        "failed": dict(by_error),
        "kill_took_s": round(kill_took, 3),
        "kill_to_promote_s": round(promoting_at - killed_at, 2),
        "promote_took_s": round(promoted_at - promoting_at, 2),
        "recover_from_kill": recover,
    }
    # Every worker lives throughout: a worker_lost verdict (on a task, or on an attempt
    # of a retried at_least_once task) means a sweeper judged a live worker dead, unless
    # the run's own worker fenced it (it could not renew its lease through the gap).
    logs = "\n".join(log_of(node) for node in nodes)
    fenced = {int(i) for i in re.findall(r"task (\d+): no answer from the database", logs)}
    swept = {int(i) for i in re.findall(r"recovery: task (\d+) lost its worker", logs)}
    judged_dead = [r for r in cluster.query(
        "SELECT a.task_id, a.attempt, a.worker_id, a.started_at, a.finished_at, t.delivery"
        " FROM task_attempts a JOIN tasks t ON t.id = a.task_id"
        " WHERE a.error = 'worker_lost' ORDER BY a.task_id")
        if r["task_id"] in swept or r["task_id"] not in fenced]
    figures["judged_dead"] = len(judged_dead)
    figures["fenced"] = len(fenced)

    print(f"\nPG FAILOVER FIGURES: {json.dumps(figures)}")

    assert not lost, f"acknowledged tasks missing on the new primary: {lost}"
    assert not left, f"acknowledged tasks not finished after {SETTLE_TIMEOUT_S}s: {left}"
    assert not duplicated, (
        f"commands started twice: {duplicated}: "
        f"{[line for line in lines if line[0] in duplicated]}")
    assert not judged_dead, (
        f"live workers were judged dead after the failover ({len(judged_dead)} runs "
        f"given up as worker_lost): {judged_dead}")
    for task_id, row in rows.items():
        if row["delivery"] == "at_least_once":
            assert row["completed_at"] is not None, f"at_least_once task failed: {row}"
            assert starts[task_id] >= 1, f"task {task_id} succeeded but never ran: {row}"
        elif row["completed_at"] is not None:
            assert starts[task_id] == 1, f"task {task_id} succeeded, started {starts[task_id]}x"
        else:
            # Failed: only one caught starting at the crash, for a crash reason, or one
            # its worker fenced.
            assert row["error"] in CRASH_ERRORS or (
                row["error"] == "worker_lost" and task_id in fenced), (
                f"task {task_id} failed: {row}")
            assert row["started_at"] is not None and row["started_at"] < promoted_db_at, (
                f"task {task_id} failed but did not start before the promotion: {row}")
        assert row["cancelled_at"] is None, row

    # The same processes throughout, and they work: a new task runs.
    assert all(node.alive() for node in nodes), [n.name for n in nodes if not n.alive()]
    assert {node.name: node.pid for node in cluster.processes.nodes} == pids
    after = request(cluster.url, "POST", "/schedule", {
        "command": f'echo "$CHRONOSYNC_TASK_ID $CHRONOSYNC_ATTEMPT" >> {marker}'})
    assert after.status == 201, after
    done = cluster.wait_task(after.body["id"], ("succeeded", "failed"), timeout=30)
    assert done["status"] == "succeeded", done
