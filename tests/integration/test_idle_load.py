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
import pytest
from harness import Cluster, query, wait_for
from psycopg.types.json import Jsonb

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


# The history: finished tasks of ten jobs (five forbid, five replace) and one-off tasks.
HISTORY = 1_000_000
JOBS = 10
# Shared buffers one periodic statement may touch (summed over its plan's nodes) with
# this history and the little live work below; reading a job's history (or all of it)
# touches tens of thousands.
MAX_BUFFERS = 1000
# Every statement that runs on a timer, whatever the load: the coordinator's claim loop
# and sweep, the scheduler's concurrency step, a metrics scrape, and its parameters.
FREE_WORKERS = Jsonb([{"id": "worker-live", "labels": {"host": "test", "zone": "eu-1"}}])
PERIODIC = {
    "claim_due": {"coordinator_id": "coordinator-plan", "limit": 10,
                  "free_workers": FREE_WORKERS},
    "next_due_in": {"free_workers": FREE_WORKERS},
    "requeue_stale_claims": {"lease_s": 5.0},
    "recover_lost_runs": {"ttl_s": 5.0, "sweeper": "coordinator-x", "fresh_s": 2.0,
                          "backoff_base_s": 1.0, "backoff_max_s": 60.0},
    "sort_targeted": {"ttl_s": 5.0, "judge_dead": True},
    "prune_finished": {"retention_s": 30 * 86400.0, "limit": 500},
    "skip_forbidden": {},
    "replace_running": {},
    "queue_depth": {},
    "in_flight": {},
    "job_health": {},
}


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in plan_nodes(child))]


@pytest.mark.slow
def test_every_periodic_statement_reads_live_work_only_over_a_million_finished_tasks(
    dsn: str
) -> None:
    query(dsn, f"""
        INSERT INTO tasks (command, scheduled_at, due_at, picked_at, started_at,
                           completed_at, attempt, job_id, concurrency_policy, worker_id)
        SELECT 'true', at, at, at, at, at + interval '1 second', 1, job,
               CASE WHEN job <= {JOBS // 2} THEN 'forbid' WHEN job IS NOT NULL
                    THEN 'replace' END,
               'worker-gone'
        FROM generate_series(1, {HISTORY}) AS i,
             LATERAL (SELECT now() - interval '1 day' - i * interval '1 second' AS at,
                             CASE WHEN i % 4 <> 0 THEN i % {JOBS} + 1 END AS job) s""")
    # Live work: a live worker running one occurrence of each job, a due occurrence of
    # each (held back by forbid, or replacing the run), a later one, and one-off tasks.
    query(dsn, "INSERT INTO nodes (id, kind, host, pid, address, capacity)"
               " VALUES ('worker-live', 'worker', 'test', 1, 'nowhere:1', 8)")
    query(dsn, f"""
        INSERT INTO tasks (command, scheduled_at, picked_at, started_at, attempt, job_id,
                           concurrency_policy, worker_id, claim_token)
        SELECT 'sleep 600', now() - interval '1 minute', now(), now(), 1, job,
               CASE WHEN job <= {JOBS // 2} THEN 'forbid' ELSE 'replace' END,
               'worker-live', gen_random_uuid()
        FROM generate_series(1, {JOBS}) AS job""")
    query(dsn, "INSERT INTO task_attempts (task_id, attempt, worker_id, started_at)"
               " SELECT id, 1, worker_id, started_at FROM tasks WHERE worker_id = 'worker-live'")
    query(dsn, f"""
        INSERT INTO tasks (command, scheduled_at, job_id, concurrency_policy)
        SELECT 'true', now() + offset_s * interval '1 second', job,
               CASE WHEN job <= {JOBS // 2} THEN 'forbid' ELSE 'replace' END
        FROM generate_series(1, {JOBS}) AS job, unnest(ARRAY[-1, 3600]) AS offset_s""")
    query(dsn, "INSERT INTO tasks (command, scheduled_at)"
               " SELECT 'true', now() + i * interval '1 minute' FROM generate_series(1, 20) i")
    # Targeted tasks: due for a live worker's labels, for labels no worker has (set aside
    # or not yet), and one of a broadcast pinned to the live worker.
    query(dsn, """
        INSERT INTO tasks (command, scheduled_at, target, unmatched_at, pinned_worker)
        SELECT 'true', now() - interval '1 second', jsonb_build_object('labels', labels),
               CASE WHEN i % 2 = 0 THEN now() END, pinned
        FROM generate_series(1, 20) AS i,
             LATERAL (SELECT CASE WHEN i <= 5 THEN '{"zone": "eu-1"}'::jsonb
                                  ELSE '{"zone": "nowhere"}'::jsonb END AS labels,
                             CASE WHEN i = 1 THEN 'worker-live' END AS pinned) s""")
    query(dsn, "VACUUM ANALYZE tasks")

    problems = []
    for name, params in PERIODIC.items():
        explained = explain(dsn, name, params)
        nodes = plan_nodes(explained["Plan"])
        scans = [n for n in nodes if n["Node Type"] == "Seq Scan"
                 and n.get("Relation Name") == "tasks"]
        # Over every node (a parent counts its children's too, and a data-modifying CTE
        # runs apart from the top node): an upper bound of what the statement touched.
        buffers = sum(n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0)
                      for n in nodes)
        if scans:
            problems.append(f"{name}: a sequential scan of tasks")
        if buffers > MAX_BUFFERS:
            problems.append(f"{name}: {buffers} shared buffers")
    assert not problems, "periodic statements that read history:\n" + "\n".join(problems)
