"""Where a task runs: workers advertise labels, a task or job names the labels its worker
must have (``target``). Real processes; what Postgres recorded decides."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from harness import Cluster, node_id, wait_for

from chronocore.queries import QUERIES
from chronocore.repository import TaskRepository

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")
EU_WORKER = [{"id": "worker-eu", "labels": {"zone": "eu-1"}}]


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
    assert len(repo.sort_targeted(ttl_s=60, judge_dead=True)["set_aside"]) == 5000

    with psycopg.connect(dsn, autocommit=True) as conn, \
            conn.transaction(force_rollback=True):  # explaining claims nothing
        plan = conn.execute(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES['claim_due']}",
            {"coordinator_id": "c", "limit": 64,
             "free_workers": psycopg.types.json.Jsonb(EU_WORKER)},
        ).fetchone()[0][0]["Plan"]

    def rows_read(node: dict) -> int:
        """Rows the scan picking due tasks read (kept or filtered out)."""
        picks = "due_at <= now()" in node.get("Index Cond", "") + node.get("Filter", "")
        own = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0) if picks else 0
        return own + sum(rows_read(child) for child in node.get("Plans", []))

    assert 0 < rows_read(plan) < 100, json.dumps(plan, indent=1)
    claimed = repo.claim_due(coordinator_id="c", limit=64, free_workers=EU_WORKER)
    assert len(claimed) == 10
    assert sorted(t.target is not None for t in claimed) == [False] * 5 + [True] * 5
    # A matching worker appears: they come back.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE nodes SET labels = '{\"zone\": \"nowhere\"}'")
    assert len(repo.sort_targeted(ttl_s=60, judge_dead=True)["restored"]) == 5000


def test_a_broadcast_runs_once_on_every_matching_worker_and_a_killed_one_is_lost_once(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    web = [cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=web") for _ in range(3)]
    other = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=db")
    cluster.wait_ready(coordinators=1, workers=4)
    web_ids = {node_id(cluster, w): w for w in web}
    starts, release = tmp_path / "starts", tmp_path / "release"
    command = (f"echo $CHRONOSYNC_TASK_ID >> {starts}; "
               f"while [ ! -e {release} ]; do sleep 0.05; done")

    made = submit(cluster, {"command": command,
                            "target": {"labels": {"role": "web"}, "all": True}})
    group = made["broadcast"]
    assert len(group) == 3 and made["id"] == group[0]
    tasks = [cluster.task(task_id) for task_id in group]
    assert {t["pinned_worker"] for t in tasks} == set(web_ids)
    assert {t["broadcast_id"] for t in tasks} == {made["broadcast_id"]}

    def all_started() -> bool:
        return starts.exists() and len(starts.read_text().split()) == 3

    wait_for(all_started, timeout=30, what="the broadcast to start on the three workers")
    doomed = tasks[1]
    web_ids[doomed["pinned_worker"]].signal(signal.SIGKILL)
    cluster.wait_task(doomed["id"], ("failed",), timeout=20)
    release.touch()

    ended = {t["id"]: cluster.wait_task(t["id"], ("succeeded", "failed")) for t in tasks}
    assert ended[doomed["id"]]["error"] == "worker_lost"
    assert ended[doomed["id"]]["attempt"] == 1
    for task in tasks:
        if task["id"] != doomed["id"]:
            assert ended[task["id"]]["status"] == "succeeded", ended[task["id"]]
            assert ended[task["id"]]["worker_id"] == task["pinned_worker"]
    # A new worker and a witness task later, nothing ran twice, nothing on the other role.
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=web")
    cluster.wait_task(submit(cluster, {"command": "true"})["id"], ("succeeded",))
    assert sorted(int(i) for i in starts.read_text().split()) == sorted(group)
    assert node_id(cluster, other) not in {t["worker_id"] for t in ended.values()}


def test_a_broadcast_task_whose_worker_dies_before_starting_fails_as_worker_lost(
        cluster: Cluster, tmp_path: Path) -> None:
    """Pinned to one worker, it never runs on another: the sweep fails it instead."""
    cluster.start("scheduler")
    cluster.start("coordinator")
    first = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=web")
    second = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=web")
    cluster.wait_ready(coordinators=1, workers=2)
    runs = tmp_path / "runs"
    second.signal(signal.SIGSTOP)  # alive in the registry a little longer, taking nothing
    try:
        made = submit(cluster, {"command": f"echo $CHRONOSYNC_TASK_ID >> {runs}",
                                "target": {"labels": {"role": "web"}, "all": True},
                                "scheduled_at": "2000-01-01T00:00:00Z"})
        assert len(made["broadcast"]) == 2
        second.signal(signal.SIGKILL)
    finally:
        second.signal(signal.SIGCONT)
    ended = {i: cluster.wait_task(i, ("succeeded", "failed")) for i in made["broadcast"]}
    pinned_to_second = [t for t in ended.values()
                        if t["pinned_worker"] == node_id(cluster, second)]
    assert [(t["status"], t["error"], t["attempt"]) for t in pinned_to_second] == [
        ("failed", "worker_lost", 0)]
    ran = runs.read_text().split()
    assert [int(i) for i in ran] == [t["id"] for t in ended.values()
                                     if t["pinned_worker"] == node_id(cluster, first)]


def test_a_broadcast_job_makes_one_task_per_matching_worker_per_occurrence(
        cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    web = [cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=web") for _ in range(2)]
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="role=db")
    cluster.wait_ready(coordinators=1, workers=3)
    web_ids = {node_id(cluster, w) for w in web}
    job = submit(cluster, {"command": "true", "cron": "* * * * * *",
                           "target": {"labels": {"role": "web"}, "all": True}})

    def two_occurrences_done() -> list[dict]:
        rows = cluster.query(
            "SELECT scheduled_at, array_agg(worker_id ORDER BY worker_id) AS workers, "
            "count(DISTINCT broadcast_id) AS groups FROM tasks "
            "WHERE job_id = %s AND completed_at IS NOT NULL GROUP BY scheduled_at "
            "HAVING count(*) = 2", (job["id"],))
        return rows if len(rows) >= 2 else []

    for occurrence in wait_for(two_occurrences_done, timeout=30,
                               what="two occurrences run on both web workers"):
        assert set(occurrence["workers"]) == web_ids and occurrence["groups"] == 1
    assert cluster.query("SELECT count(*) AS n FROM tasks WHERE job_id = %s "
                         "AND worker_id NOT IN (SELECT unnest(%s::text[]))",
                         (job["id"], list(web_ids)))[0]["n"] == 0
    status, bad = cluster.http("POST", "/schedule", {
        "command": "true", "cron": "* * * * *", "concurrency_policy": "forbid",
        "target": {"labels": {"role": "web"}, "all": True}})
    assert (status, bad["field"]) == (400, "target")

    # A one-off broadcast replayed with its idempotency key makes nothing more.
    once = {"command": "true", "scheduled_at": "2099-01-01T00:00:00Z",
            "idempotency_key": "every-web-host",
            "target": {"labels": {"role": "web"}, "all": True}}
    status, first = cluster.http("POST", "/schedule", once)
    assert status == 201 and len(first["broadcast"]) == 2
    status, again = cluster.http("POST", "/schedule", once)
    assert (status, again["id"], again["broadcast"]) == (200, first["id"], first["broadcast"])
    status, clash = cluster.http("POST", "/schedule", {**once, "command": "false"})
    assert (status, clash["field"]) == (409, "idempotency_key")
    assert cluster.query("SELECT count(*) AS n FROM tasks WHERE broadcast_id = %s",
                         (first["broadcast_id"],))[0]["n"] == 2


def test_a_worker_with_malformed_labels_refuses_to_start_and_says_why(
        cluster: Cluster) -> None:
    worker = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1,disk")
    wait_for(lambda: not worker.alive(), timeout=30, what="the worker to give up")
    assert worker.how_it_ended() == "exited with code 2"
    assert "CHRONOSYNC_WORKER_LABELS: 'disk' is not key=value" in worker.last_words()
    assert cluster.query("SELECT count(*) AS n FROM nodes")[0]["n"] == 0


def test_bad_targets_are_refused_with_a_400_naming_the_field(cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.wait_ready(coordinators=0, workers=0)
    for target in ("zone=eu-1", {"labels": {}}, {"labels": {"zone": ""}},
                   {"labels": {"zone": "eu-1"}, "all": "yes"},
                   {"labels": {"zone": "eu-1"}, "nodes": 3},
                   {"labels": {"zone": ["eu-1"]}}, {"labels": {"k" * 500: "v"}}):
        for extra in ({}, {"cron": "* * * * *"}):
            status, body = cluster.http("POST", "/schedule", {"command": "true",
                                                              "target": target, **extra})
            assert (status, body["field"]) == (400, "target"), (target, body)
    status, job = cluster.http("POST", "/schedule", {"command": "true", "cron": "@daily"})
    assert status == 201 and job["target"] is None
    status, body = cluster.http("PATCH", f"/jobs/{job['id']}",
                                {"target": {"labels": {"zone": "eu 1"}}})
    assert (status, body["field"]) == (400, "target")
    status, body = cluster.http("PATCH", f"/jobs/{job['id']}",
                                {"target": {"labels": {"zone": "eu-1"}}})
    assert status == 200 and body["target"] == {"labels": {"zone": "eu-1"}}
    assert cluster.query("SELECT target FROM jobs")[0]["target"] == {
        "labels": {"zone": "eu-1"}}


def test_a_claim_loop_sleeps_while_the_only_matching_worker_is_busy(
        cluster: Cluster, tmp_path: Path) -> None:
    """Another worker has room, the claim refuses the due targeted task: the loop must
    sleep until the busy worker frees a slot, not ask again at once forever."""
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1",
                  CHRONOSYNC_WORKER_CAPACITY="1")
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=us-1")
    cluster.wait_ready(coordinators=1, workers=2)
    release = tmp_path / "release"
    busy = submit(cluster, {"command": f"while [ ! -e {release} ]; do sleep 0.05; done",
                            "target": {"labels": {"zone": "eu-1"}}})
    cluster.wait_task(busy["id"], ("running",))
    behind = submit(cluster, {"command": "true", "target": {"labels": {"zone": "eu-1"}}})

    def commits() -> int:
        return cluster.query("SELECT xact_commit FROM pg_stat_database"
                             " WHERE datname = current_database()")[0]["xact_commit"]

    before, began = commits(), time.monotonic()
    time.sleep(3.0)  # the measured window itself
    rate = (commits() - before) / (time.monotonic() - began)
    # Heartbeats and sweeps of four nodes make tens a second; a loop that never sleeps
    # makes well over a thousand.
    assert rate < 200, f"{rate:.0f} commits/s while the only matching worker is busy"
    assert cluster.task(behind["id"])["status"] == "scheduled"

    release.touch()  # the slot frees: the task behind runs
    assert cluster.wait_task(behind["id"], ("succeeded",))["worker_id"] == cluster.task(
        busy["id"])["worker_id"]
