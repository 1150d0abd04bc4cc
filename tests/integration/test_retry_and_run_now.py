"""Runs made by hand, on a real cluster: POST /tasks/{id}/retry makes a new task from a
finished one, linked by retry_of; POST /jobs/{id}/run makes an extra occurrence due now,
as the job's concurrency policy allows, without moving its schedule; and the CLI's
``retry`` and ``run``."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from harness import Cluster, process_gone, query, wait_for
from psycopg.rows import dict_row

from chronocore.db import open_pool
from chronocore.jobs import parse_job
from chronocore.queries import QUERIES, Queries
from chronocore.repository import JobRepository, KeyTaken, insert_by_hand

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")
FAR = "2099-01-01T00:00:00Z"
YEARLY = "0 0 1 1 *"  # a job whose own ticks never come during a test
FINISHED = ("succeeded", "failed", "cancelled")
# Columns of tasks a retry sets afresh: when and how it ran, and what names it. Every
# other column says what runs, how or where, and is copied (queries.sql insert_retry).
STATE_COLUMNS = {
    "id", "scheduled_at", "due_at", "picked_at", "started_at", "completed_at",
    "failed_at", "cancelled_at", "created_at", "attempt", "claim_token", "claimed_by",
    "worker_id", "exit_code", "error", "output", "idempotency_key", "request_hash",
    "retry_of",
}


@pytest.fixture
def api(cluster: Cluster) -> Cluster:
    cluster.start_default(coordinators=1, workers=1)
    return cluster


def post(cluster: Cluster, path: str, body: Any = None) -> tuple[int, Any]:
    return cluster.http("POST", path, body)


def test_a_retry_makes_a_new_task_that_runs_and_names_the_one_it_retries(
    api: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "tried"
    # Fails the first time, succeeds the second: the retry runs the same command.
    command = f'test -e {marker} || {{ touch {marker}; echo "first $GREETING"; exit 3; }}; ' \
              'echo "again $GREETING"'
    _, original = post(api, "/schedule", {"command": command, "env": {"GREETING": "hi"},
                                          "timeout_s": 60, "name": "flaky"})
    failed = api.wait_task(original["id"], FINISHED)
    assert (failed["status"], failed["error"], failed["retry_of"]) == ("failed", "exit 3", None)

    status, retry = post(api, f"/tasks/{original['id']}/retry")
    assert status == 201, retry
    assert retry["id"] != original["id"] and retry["retry_of"] == original["id"]
    assert retry["status"] in ("scheduled", "picked", "running", "succeeded"), retry
    for field in ("command", "env", "delivery", "max_attempts", "timeout_s", "name",
                  "job_id"):
        assert retry[field] == original[field], field
    assert retry["attempt"] == 0 or retry["status"] != "scheduled"
    done = api.wait_task(retry["id"], FINISHED)
    assert (done["status"], done["output"]) == ("succeeded", "again hi\n"), done
    assert done["retry_of"] == original["id"] and len(done["attempts"]) == 1
    # The original is left as it was; both show in the list, the retry naming it.
    assert api.task(original["id"]) == failed
    listed = {t["id"]: t for t in api.http("GET", "/tasks")[1]["tasks"]}
    assert listed[retry["id"]]["retry_of"] == original["id"]
    assert listed[original["id"]]["retry_of"] is None


def test_a_retry_copies_every_column_that_says_what_runs(api: Cluster) -> None:
    """A column added to tasks is either copied by a retry or listed as state here: a
    target (where a task runs) added later is copied, or this test says to decide."""
    columns = {r["column_name"] for r in api.query(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'")}
    _, job = post(api, "/schedule", {"command": "exit 1", "cron": YEARLY,
                                     "concurrency_policy": "replace", "name": "copied",
                                     "delivery": "at_least_once", "max_attempts": 2,
                                     "timeout_s": 9, "env": {"A": "b"}})
    first = post(api, f"/jobs/{job['id']}/run")[1]["id"]
    assert api.wait_task(first, FINISHED)["status"] == "failed"
    status, retry = post(api, f"/tasks/{first}/retry")
    assert status == 201, retry
    rows = api.query("SELECT * FROM tasks WHERE id IN (%s, %s) ORDER BY id",
                     (first, retry["id"]))
    assert [r["id"] for r in rows] == [first, retry["id"]]
    copied = sorted(columns - STATE_COLUMNS)
    assert {"command", "env", "delivery", "max_attempts", "timeout_s", "name", "job_id",
            "concurrency_policy"} <= set(copied)
    assert {c: rows[1][c] for c in copied} == {c: rows[0][c] for c in copied}
    assert (rows[0]["concurrency_policy"], rows[0]["env"], rows[0]["job_id"]) == (
        "replace", {"A": "b"}, job["id"])


def test_only_a_finished_task_is_retried(api: Cluster) -> None:
    _, waiting = post(api, "/schedule", {"command": "true", "scheduled_at": FAR})
    status, error = post(api, f"/tasks/{waiting['id']}/retry")
    assert status == 409 and "is scheduled" in error["error"], error
    _, running = post(api, "/schedule", {"command": "sleep 300"})
    api.wait_task(running["id"], ("running",))
    status, error = post(api, f"/tasks/{running['id']}/retry")
    assert status == 409 and "is running" in error["error"], error
    # Cancelled before it started: finished, and retried.
    post(api, f"/tasks/{waiting['id']}/cancel")
    status, retry = post(api, f"/tasks/{waiting['id']}/retry")
    assert status == 201 and retry["retry_of"] == waiting["id"], retry
    assert api.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 3


def test_a_cancelled_task_still_stopping_is_retried_only_once_it_has_ended(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_KILL_GRACE_S="60")  # it ignores SIGTERM a while
    cluster.wait_ready(coordinators=1, workers=1)
    pid_file = tmp_path / "pid"
    _, task = post(cluster, "/schedule", {
        "command": f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.1; done"})
    wait_for(pid_file.exists, timeout=30, what="the command to start")
    assert post(cluster, f"/tasks/{task['id']}/cancel")[1]["status"] == "cancelled"
    status, error = post(cluster, f"/tasks/{task['id']}/retry")
    assert status == 409 and "still stopping" in error["error"], error
    assert cluster.task(task["id"])["failed_at"] is None  # it was still stopping
    subprocess.run(["kill", "-KILL", pid_file.read_text().strip()], check=False)
    wait_for(lambda: cluster.task(task["id"])["failed_at"], timeout=30,
             what="the cancelled run to be recorded as ended")
    status, retry = post(cluster, f"/tasks/{task['id']}/retry")
    assert status == 201 and retry["retry_of"] == task["id"], retry


def test_a_retry_with_an_idempotency_key_is_made_once(api: Cluster) -> None:
    _, first = post(api, "/schedule", {"command": "exit 2"})
    _, second = post(api, "/schedule", {"command": "exit 4"})
    for task in (first, second):
        api.wait_task(task["id"], FINISHED)
    body = {"idempotency_key": "retry-it-once"}
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(api, f"/tasks/{first['id']}/retry", body),
                                range(8)))
    made = [a for a in answers if a[0] == 201]
    assert len(made) == 1 and all(a[0] in (200, 201) for a in answers), answers
    assert {a[1]["id"] for a in answers} == {made[0][1]["id"]}
    assert api.query("SELECT count(*) AS n FROM tasks WHERE retry_of = %s",
                     (first["id"],))[0]["n"] == 1
    # The same key for another task's retry, or for a submission, is a conflict.
    status, error = post(api, f"/tasks/{second['id']}/retry", body)
    assert status == 409 and error["field"] == "idempotency_key", error
    status, error = post(api, "/schedule", {"command": "true", **body})
    assert status == 409 and error["field"] == "idempotency_key", error


GARBAGE = [
    ("/tasks/987654/retry", None, 404, None), ("/tasks/x/retry", None, 404, None),
    ("/tasks/99999999999999999999999/retry", None, 404, None),
    ("/tasks/-1/retry", None, 404, None), ("/tasks/1/retry", [], 400, None),
    ("/tasks/1/retry", {"command": "true"}, 400, "command"),
    ("/tasks/1/retry", {"idempotency_key": 7}, 400, "idempotency_key"),
    ("/jobs/987654/run", None, 404, None), ("/jobs/x/run", None, 404, None),
    ("/jobs/1/run", {"command": "true"}, 400, "command"), ("/jobs/1/run", "now", 400, None),
]


def test_garbage_to_retry_and_run_now_is_a_4xx_naming_what_is_wrong(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler")
    cluster.wait_ready(coordinators=0, workers=0)
    post(cluster, "/schedule", {"command": "true", "scheduled_at": FAR})  # task 1
    post(cluster, "/schedule", {"command": "true", "cron": YEARLY})  # job 1
    for path, body, expected, field in GARBAGE:
        status, error = post(cluster, path, body)
        assert (status, error["field"]) == (expected, field), (path, body, error)
        assert error["error"]
    assert cluster.http("GET", "/tasks/1/retry")[0] == 405
    assert cluster.http("GET", "/jobs/1/run")[0] == 405
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 1  # nothing made


def test_run_now_makes_a_task_that_runs_now_and_leaves_the_schedule(
    api: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    _, job = post(api, "/schedule", {"command": f"echo $CHRONOSYNC_TASK_ID >> {marker}",
                                     "cron": YEARLY, "name": "yearly-report"})
    before = api.query("SELECT next_run_at FROM jobs WHERE id = %s", (job["id"],))[0]
    status, task = post(api, f"/jobs/{job['id']}/run")
    assert status == 201, task
    assert (task["kind"], task["job_id"], task["name"], task["retry_of"]) == (
        "task", job["id"], "yearly-report", None)
    done = api.wait_task(task["id"], FINISHED)
    assert done["status"] == "succeeded", done
    assert marker.read_text().split() == [str(task["id"])]
    row = api.query("SELECT scheduled_at, created_at, now() AS now FROM tasks WHERE id = %s",
                    (task["id"],))[0]
    assert row["created_at"] <= row["scheduled_at"] <= row["now"]
    assert row["scheduled_at"].microsecond != 0  # never a cron tick's instant
    assert api.query("SELECT next_run_at FROM jobs WHERE id = %s", (job["id"],))[0] == before
    shown = api.http("GET", f"/jobs/{job['id']}")[1]
    assert shown["next_runs"] == job["next_runs"]
    assert [t["id"] for t in shown["recent"]] == [task["id"]]  # in the job's history
    # A paused job runs by hand too, and stays paused.
    api.http("PATCH", f"/jobs/{job['id']}", {"paused": True})
    status, again = post(api, f"/jobs/{job['id']}/run", {})
    assert status == 201 and api.wait_task(again["id"], FINISHED)["status"] == "succeeded"
    assert api.http("GET", f"/jobs/{job['id']}")[1]["paused"] is True


def test_runs_now_at_once_each_make_their_own_task(api: Cluster) -> None:
    """The unique (job, instant) key: runs made in the same instant never collide (nor
    500), and none takes an instant a tick could take."""
    _, job = post(api, "/schedule", {"command": "true", "cron": YEARLY, "paused": True})
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(api, f"/jobs/{job['id']}/run"), range(48)))
    assert [status for status, _ in answers] == [201] * 48, answers
    rows = api.query("SELECT scheduled_at FROM tasks WHERE job_id = %s", (job["id"],))
    assert len(rows) == 48 == len({r["scheduled_at"] for r in rows})
    assert all(r["scheduled_at"].microsecond for r in rows)


def test_a_run_by_hand_takes_the_next_instant_free_and_never_a_whole_second(dsn: str) -> None:
    """What makes runs by hand never collide on the unique (job, instant) key, on a real
    database: the instant a tick or another run by hand holds is passed over."""
    second = datetime(2030, 1, 1, 4, 30, tzinfo=UTC)
    us = timedelta(microseconds=1)
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn, \
            open_pool(dsn, size=1, name="by-hand") as pool:
        db = Queries(pool)
        job = conn.execute("INSERT INTO jobs (command, cron, next_run_at) VALUES ('true', "
                           "'* * * * * *', now()) RETURNING id").fetchone()["id"]

        def occurrence(at: datetime) -> dict[str, Any]:
            return {"job_ids": [job], "occurrences": [at], "ttl_s": 5.0}

        def at_of(task_id: int) -> datetime:
            return conn.execute("SELECT scheduled_at FROM tasks WHERE id = %s",
                                (task_id,)).fetchone()["scheduled_at"]

        # A whole second is left to the ticks, even one not made yet.
        assert at_of(insert_by_hand(db, "insert_occurrences", occurrence,
                                    now=second)) == second + us
        conn.execute("DELETE FROM tasks")
        conn.execute(QUERIES["insert_occurrences"], occurrence(second))  # a tick
        conn.execute(QUERIES["insert_occurrences"], occurrence(second + us))  # by hand
        ran = insert_by_hand(db, "insert_occurrences", occurrence, now=second)
        assert at_of(ran) == second + 2 * us
        retried = insert_by_hand(db, "insert_retry", lambda at: {
            "id": ran, "at": at, "idempotency_key": None, "request_hash": None}, now=second)
        assert at_of(retried) == second + 3 * us
        assert conn.execute("SELECT retry_of, job_id FROM tasks WHERE id = %s",
                            (retried,)).fetchone() == {"retry_of": ran, "job_id": job}
        # An idempotency key another request holds is told apart from a taken instant.
        conn.execute("UPDATE tasks SET idempotency_key = 'held' WHERE id = %s", (ran,))
        with pytest.raises(KeyTaken):
            insert_by_hand(db, "insert_retry", lambda at: {
                "id": ran, "at": at, "idempotency_key": "held", "request_hash": None},
                now=second + 10 * us, idempotency_key="held")


def test_run_now_honours_forbid_as_a_tick_would(cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.wait_ready(coordinators=0, workers=0)
    _, job = post(cluster, "/schedule", {"command": "sleep 300", "cron": YEARLY,
                                         "concurrency_policy": "forbid"})
    # No worker yet: the first run waits, due; a second would wait behind it, then be
    # skipped, so it is refused.
    status, first = post(cluster, f"/jobs/{job['id']}/run")
    assert status == 201, first
    status, error = post(cluster, f"/jobs/{job['id']}/run")
    assert status == 409, error
    assert f"task {first['id']} is scheduled" in error["error"]
    assert "forbid" in error["error"] and error["field"] is None
    cluster.start("coordinator")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    cluster.wait_task(first["id"], ("running",))
    status, error = post(cluster, f"/jobs/{job['id']}/run")
    assert status == 409 and f"task {first['id']} is running" in error["error"], error
    assert cluster.query("SELECT count(*) AS n FROM tasks WHERE job_id = %s",
                         (job["id"],))[0]["n"] == 1
    # Once it has ended, a run is made; a retry of the job's task is a run of the job,
    # refused alike while that one runs.
    post(cluster, f"/tasks/{first['id']}/cancel")
    cluster.wait_task(first["id"], ("cancelled",))
    wait_for(lambda: cluster.task(first["id"])["failed_at"], timeout=30,
             what="the cancelled run to end")
    status, second = post(cluster, f"/jobs/{job['id']}/run")
    assert status == 201, second
    cluster.wait_task(second["id"], ("running",))
    status, error = post(cluster, f"/tasks/{first['id']}/retry")
    assert status == 409 and f"task {second['id']} is running" in error["error"], error


def test_run_now_with_replace_cancels_the_running_one(api: Cluster, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    _, job = post(api, "/schedule", {"command": f"echo $$ >> {pids}; exec sleep 300",
                                     "cron": YEARLY, "concurrency_policy": "replace"})
    _, first = post(api, f"/jobs/{job['id']}/run")
    api.wait_task(first["id"], ("running",))
    wait_for(lambda: pids.exists() and pids.read_text().split(), timeout=10,
             what="the first run to write its pid")
    status, second = post(api, f"/jobs/{job['id']}/run")
    assert status == 201, second
    assert api.task(first["id"])["status"] == "cancelled"  # at once, in the same answer
    api.wait_task(second["id"], ("running",))
    first_pid = int(pids.read_text().split()[0])
    wait_for(lambda: process_gone(first_pid), timeout=10,
             what="the replaced run's process to be terminated")
    ended = wait_for(lambda: (t := api.task(first["id"]))["failed_at"] and t, timeout=30,
                     what="the replaced run to be recorded")
    assert (ended["status"], ended["error"]) == ("cancelled", "cancelled"), ended
    assert api.task(second["id"])["status"] == "running"


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHRONOSYNC, "--url", url, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_cli_runs_a_job_now_and_retries_a_task(api: Cluster) -> None:
    _, job = post(api, "/schedule", {"command": "echo by-hand; exit 5", "cron": YEARLY})
    ran = cli(api.url, "run", str(job["id"]))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("task ") and f"run of job {job['id']}" in ran.stdout
    task_id = int(ran.stdout.split()[1])
    assert api.wait_task(task_id, FINISHED)["status"] == "failed"
    retried = cli(api.url, "retry", str(task_id), "-o", "json")
    assert retried.returncode == 0, retried.stderr
    made = json.loads(retried.stdout)
    assert (made["retry_of"], made["job_id"]) == (task_id, job["id"])
    again = cli(api.url, "retry", str(task_id), "--idempotency-key", "k1")
    same = cli(api.url, "retry", str(task_id), "--idempotency-key", "k1")
    assert again.returncode == 0 and again.stdout == same.stdout
    assert f"retry of task {task_id}" in again.stdout
    missing = cli(api.url, "retry", "987654")
    assert missing.returncode == 1 and "404" in missing.stderr
    for name in ("run", "retry"):
        shown = cli(api.url, name, "--help")
        assert shown.returncode == 0 and f"chronosync {name} " in shown.stdout
    listed = cli(api.url, "--help")
    assert "retry" in listed.stdout and "run" in listed.stdout


def test_a_delete_waits_for_a_run_by_hand_being_made_and_cancels_its_task(dsn: str) -> None:
    """A run now (or retry) of a job commits its task after the job's delete began: the
    delete must wait for it and cancel that task too, or it would run after the 204."""
    with open_pool(dsn, size=2, name="delete-race") as pool:
        pool.wait(timeout=30)
        jobs = JobRepository(pool)
        job_id, _ = jobs.create(parse_job({"command": "true", "cron": YEARLY}))
        # A run by hand of it, half made: its turn taken, its task written, not committed.
        with psycopg.connect(dsn) as hand:
            hand.execute(QUERIES["hand_runs_one_at_a_time"], {"id": job_id})
            at = hand.execute("SELECT now() + interval '1.5 s' AS at").fetchone()[0]
            hand.execute(QUERIES["insert_occurrences"],
                         {"job_ids": [job_id], "occurrences": [at], "ttl_s": 5})
            with ThreadPoolExecutor(1) as pool_of_one:
                deleting = pool_of_one.submit(jobs.delete, job_id)
                wait_for(lambda: query(dsn, "SELECT 1 FROM pg_stat_activity"
                                            " WHERE wait_event = 'advisory'"),
                         timeout=10, what="the delete to wait for the run by hand")
                assert not deleting.done()
                hand.commit()
                assert deleting.result(timeout=30) is True
    rows = query(dsn, "SELECT cancelled_at, started_at, error FROM tasks WHERE job_id = %s",
                 (job_id,))
    assert len(rows) == 1, rows
    assert rows[0]["cancelled_at"] is not None and rows[0]["started_at"] is None, rows
