"""Where a task runs: workers advertise labels, a task or job names the labels its worker
must have (``target``). Real processes; what Postgres recorded decides."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
from harness import Cluster, node_id, wait_for

from chronocore.queries import QUERIES
from chronocore.repository import TaskRepository

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")


def submit(cluster: Cluster, body: dict) -> dict:
    status, made = cluster.http("POST", "/schedule", body)
    assert status == 201, made
    return made


def test_targeted_tasks_and_jobs_run_only_on_workers_with_their_labels(
        cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    groups = {"eu-1": [cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1,disk=ssd")
                       for _ in range(2)],
              "us-1": [cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=us-1,host=us-a")
                       for _ in range(2)]}
    cluster.wait_ready(coordinators=1, workers=4)
    ids = {zone: {node_id(cluster, w) for w in workers} for zone, workers in groups.items()}

    status, nodes = cluster.http("GET", "/nodes")
    assert status == 200
    labels = {n["id"]: n["labels"] for n in nodes["nodes"] if n["kind"] == "worker"}
    assert all(labels[i]["zone"] == "eu-1" and labels[i]["disk"] == "ssd"
               and labels[i]["host"] for i in ids["eu-1"])
    assert all(labels[i] == {"zone": "us-1", "host": "us-a"} for i in ids["us-1"])
    listed = subprocess.run([CHRONOSYNC, "--url", cluster.url, "nodes"],
                            capture_output=True, text=True, timeout=30, check=True).stdout
    assert "host=us-a,zone=us-1" in listed and "LABELS" in listed

    tasks = {zone: [submit(cluster, {"command": "true",
                                     "target": {"labels": {"zone": zone}}})["id"]
                    for _ in range(12)]
             for zone in ("eu-1", "us-1")}
    anywhere = [submit(cluster, {"command": "true"})["id"] for _ in range(6)]
    job = submit(cluster, {"command": "true", "cron": "* * * * * *",
                           "target": {"labels": {"zone": "us-1", "host": "us-a"}}})
    assert job["target"] == {"labels": {"zone": "us-1", "host": "us-a"}}

    for zone, task_ids in tasks.items():
        for task_id in task_ids:
            task = cluster.wait_task(task_id, ("succeeded",))
            assert task["worker_id"] in ids[zone], (zone, task)
            assert task["target"] == {"labels": {"zone": zone}}
            assert task["waiting"] is None
    for task_id in anywhere:
        assert cluster.wait_task(task_id, ("succeeded",))["target"] is None

    def job_runs() -> list[dict]:
        done = cluster.query("SELECT worker_id, target FROM tasks WHERE job_id = %s "
                             "AND completed_at IS NOT NULL", (job["id"],))
        return done if len(done) >= 3 else []

    for run in wait_for(job_runs, timeout=30, what="three runs of the targeted job"):
        assert run["worker_id"] in ids["us-1"]
        assert run["target"] == {"labels": {"zone": "us-1", "host": "us-a"}}


def test_a_target_no_live_worker_matches_waits_saying_so_and_runs_once_one_starts(
        cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1")
    cluster.wait_ready(coordinators=1, workers=1)

    waiting = submit(cluster, {"command": "echo ran",
                               "target": {"labels": {"zone": "ap-9", "disk": "ssd"}}})
    expected = "no live worker matches disk=ssd,zone=ap-9"
    wait_for(lambda: cluster.task(waiting["id"])["waiting"] == expected, timeout=10,
             what="the task to say why it waits")
    wait_for(lambda: cluster.query("SELECT unmatched_at FROM tasks WHERE id = %s",
                                   (waiting["id"],))[0]["unmatched_at"],
             timeout=10, what="the sweep to set the task aside")
    status, listed = cluster.http("GET", "/tasks?status=scheduled")
    assert status == 200
    assert [t["waiting"] for t in listed["tasks"] if t["id"] == waiting["id"]] == [expected]
    # Others are not held up behind it.
    assert cluster.wait_task(submit(cluster, {"command": "true"})["id"],
                             ("succeeded",))["status"] == "succeeded"
    assert cluster.task(waiting["id"])["status"] == "scheduled"

    late = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=ap-9,disk=ssd,gpu=no")
    done = cluster.wait_task(waiting["id"], ("succeeded", "failed"), timeout=30)
    assert done["status"] == "succeeded", done
    assert done["worker_id"] == node_id(cluster, late)
    assert done["waiting"] is None and done["output"] == "ran\n"
    assert [a["attempt"] for a in done["attempts"]] == [1]


def test_targeted_tasks_no_worker_matches_cost_the_claim_nothing(
        dsn: str, repo: TaskRepository) -> None:
    """Thousands of due tasks aimed at labels no live worker has: once set aside, the
    claim's scan never reads them again, however many there are."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO tasks (command, scheduled_at, target) "
                     "SELECT 'true', now() - interval '1 minute', "
                     "'{\"labels\": {\"zone\": \"nowhere\"}}' FROM generate_series(1, 5000)")
        conn.execute("INSERT INTO tasks (command, scheduled_at, target) "
                     "SELECT 'true', now() - interval '1 second', "
                     "'{\"labels\": {\"zone\": \"eu-1\"}}' FROM generate_series(1, 5)")
        conn.execute("INSERT INTO tasks (command, scheduled_at) "
                     "SELECT 'true', now() - interval '1 second' FROM generate_series(1, 5)")
        conn.execute("INSERT INTO nodes (id, kind, host, pid, address, capacity, labels) "
                     "VALUES ('worker-eu', 'worker', 'test', 1, 'nowhere:1', 4, "
                     "'{\"zone\": \"eu-1\"}')")
        conn.execute("ANALYZE tasks")
    assert len(repo.set_aside_unmatched(ttl_s=60)) == 5000

    with psycopg.connect(dsn, autocommit=True) as conn, \
            conn.transaction(force_rollback=True):  # explaining claims nothing
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES['claim_due']}",
            {"coordinator_id": "c", "limit": 64,
             "worker_labels": psycopg.types.json.Jsonb([{"zone": "eu-1"}])},
        ).fetchone()[0][0]["Plan"]

    def rows_read(node: dict) -> int:
        """Rows the scan picking due tasks read (kept or filtered out)."""
        picks = "due_at <= now()" in node.get("Index Cond", "") + node.get("Filter", "")
        own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) if picks else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    assert 0 < rows_read(plan) < 100, json.dumps(plan, indent=1)
    claimed = repo.claim_due(coordinator_id="c", limit=64, worker_labels=[{"zone": "eu-1"}])
    assert len(claimed) == 10
    assert sorted(t.target is not None for t in claimed) == [False] * 5 + [True] * 5
    # A matching worker appears: they come back.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET labels = '{\"zone\": \"nowhere\"}'")
    assert len(repo.restore_matched(ttl_s=60)) == 5000
