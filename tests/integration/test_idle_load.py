"""An idle cluster does little work, whatever waits and however long its history.

* A claim loop sleeps when every due task is one the claim refuses (a ``forbid`` job's
  occurrence held back by an earlier one), instead of asking again at once forever.
* Every statement a node runs periodically reads an index whose size follows live work
  (waiting, picked and running tasks), not the finished history.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from harness import Cluster, query, wait_for

from chronocore.queries import QUERIES

# Statements (committed transactions) per second an idle cluster of one coordinator and
# one worker may make in the test's database: heartbeats, sweeps, a claim when woken. A
# claim loop that never sleeps makes thousands.
MAX_COMMITS_PER_S = 50
MEASURE_S = 5.0


def commits(dsn: str) -> int:
    return query(dsn, "SELECT xact_commit FROM pg_stat_database"
                      " WHERE datname = current_database()")[0]["xact_commit"]


def insert_task(dsn: str, **columns: Any) -> int:
    names = ", ".join(columns)
    values = ", ".join(f"%({name})s" for name in columns)
    return query(dsn, f"INSERT INTO tasks (command, {names}) VALUES ('sleep 600', {values})"
                      " RETURNING id", columns)[0]["id"]


def test_a_claim_loop_sleeps_while_every_due_task_is_held_back_by_forbid(
    cluster: Cluster, dsn: str
) -> None:
    # No scheduler runs, so nothing skips the held-back occurrences: they stay due.
    cluster.start("coordinator")
    cluster.start("worker")
    wait_for(lambda: query(dsn, "SELECT count(*) AS n FROM nodes WHERE stopped_at IS NULL"
                                " AND last_heartbeat_at > now() - interval '1 second'"
                           )[0]["n"] == 2, timeout=30, what="the nodes to beat")

    # Job 1: its earlier occurrence waits for a retry an hour away; the later one is due
    # but must wait for it (forbid: an earlier occurrence goes first).
    retrying = insert_task(dsn, job_id=1, concurrency_policy="forbid", attempt=1,
                           scheduled_at="1999-01-01T00:00:00Z",
                           due_at="2999-01-01T00:00:00Z")
    behind_retry = insert_task(dsn, job_id=1, concurrency_policy="forbid",
                               scheduled_at="2000-01-01T00:00:00Z")
    # Job 2: one occurrence runs; the next, due, waits for it to end.
    running = insert_task(dsn, job_id=2, concurrency_policy="forbid", scheduled_at="epoch")
    wait_for(lambda: query(dsn, "SELECT started_at FROM tasks WHERE id = %s",
                           (running,))[0]["started_at"], timeout=30,
             what="the first occurrence of job 2 to start")
    behind_run = insert_task(dsn, job_id=2, concurrency_policy="forbid",
                             scheduled_at="2000-01-01T00:00:00Z")

    before, began = commits(dsn), time.monotonic()
    time.sleep(MEASURE_S)  # the measured window itself
    rate = (commits(dsn) - before) / (time.monotonic() - began)
    assert rate < MAX_COMMITS_PER_S, f"{rate:.0f} commits/s while nothing can be claimed"

    held = query(dsn, "SELECT id FROM tasks WHERE picked_at IS NULL AND cancelled_at IS NULL"
                      " AND id = ANY(%s)", ([behind_retry, behind_run],))
    assert {r["id"] for r in held} == {behind_retry, behind_run}, "forbid was not honoured"
    assert query(dsn, "SELECT picked_at FROM tasks WHERE id = %s",
                 (retrying,))[0]["picked_at"] is None

    # The run ends: the occurrence behind it is claimed (the end wakes the loops).
    query(dsn, "UPDATE tasks SET cancelled_at = now() WHERE id = %s", (running,))
    wait_for(lambda: query(dsn, "SELECT started_at FROM tasks WHERE id = %s",
                           (behind_run,))[0]["started_at"], timeout=30,
             what="the occurrence behind the run to start once the run ended")


def explain(dsn: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn, \
            conn.transaction(force_rollback=True):  # explaining changes nothing
        return conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES[name]}",
                            params).fetchone()[0][0]

