"""One-off tasks end to end: real scheduler, coordinators and workers on a real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from harness import Cluster, wait_for

from chronocore.model import format_timestamp


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def test_200_tasks_due_at_one_instant_each_run_exactly_once_and_never_early(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_default(coordinators=2, workers=2)
    marker = tmp_path / "ran.txt"
    due = db_now(cluster) + timedelta(seconds=3)
    due_text = due.astimezone(UTC).isoformat()
    ids = []
    for _ in range(200):
        status, body = cluster.http(
            "POST", "/schedule",
            {"command": f'echo "$CHRONOSYNC_TASK_ID" >> {marker}', "scheduled_at": due_text},
        )
        assert status == 201, body
        assert body["kind"] == "task" and body["scheduled_at"] == format_timestamp(due)
        # On a loaded machine the last submissions may come after the instant, and be
        # claimed at once: only those made before it must still be waiting.
        if body["status"] != "scheduled":
            assert db_now(cluster) >= due, body
        ids.append(body["id"])

    def all_finished() -> bool:
        rows = cluster.query(
            "SELECT count(*) AS n FROM tasks WHERE completed_at IS NULL AND failed_at IS NULL"
        )
        return rows[0]["n"] == 0

    wait_for(all_finished, timeout=60, what="all 200 tasks to finish")
    rows = cluster.query(
        "SELECT id, scheduled_at, started_at, completed_at, failed_at, error, attempt"
        " FROM tasks ORDER BY id"
    )
    assert [r["id"] for r in rows] == sorted(ids)
    failures = [r for r in rows if r["completed_at"] is None]
    assert not failures, failures[:5]
    early = [r["id"] for r in rows if r["started_at"] < r["scheduled_at"]]
    assert not early, f"started before scheduled_at: {early}"
    assert all(r["attempt"] == 1 for r in rows)
    ran = [int(line) for line in marker.read_text().split()]
    assert sorted(ran) == sorted(ids), "each command must run exactly once"
    # Both workers took a share: placement spreads a burst over live workers.
    workers = cluster.query("SELECT count(DISTINCT worker_id) AS n FROM tasks")[0]["n"]
    assert workers == 2


def test_the_seed_example_runs_at_its_instant_and_keeps_its_history(
    cluster: Cluster,
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    india = timezone(timedelta(hours=5, minutes=30))
    due = (db_now(cluster) + timedelta(seconds=2)).astimezone(india)
    text = due.replace(microsecond=0).isoformat()
    assert text.endswith("+05:30")
    status, body = cluster.http("POST", "/schedule", {"command": "echo hello",
                                                      "scheduled_at": text})
    assert status == 201, body
    expected = due.replace(microsecond=0).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["scheduled_at"] == expected
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "succeeded", task
    assert task["output"] == "hello\n"
    assert task["exit_code"] == 0 and task["error"] is None
    scheduled = datetime.fromisoformat(task["scheduled_at"])
    for stamp in ("picked_at", "started_at", "completed_at"):
        assert task[stamp] is not None
        assert datetime.fromisoformat(task[stamp]) >= scheduled
    assert task["failed_at"] is None
    assert [a["attempt"] for a in task["attempts"]] == [1]
    assert task["attempts"][0]["worker_id"] == task["worker_id"]
    assert task["attempts"][0]["exit_code"] == 0


def test_a_failing_command_records_its_exit_code_and_output(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=1)
    status, body = cluster.http("POST", "/schedule", {"command": "echo oops >&2; exit 7"})
    assert status == 201
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "failed"
    assert task["exit_code"] == 7 and task["error"] == "exit 7"
    assert task["output"] == "oops\n"


def test_a_task_waiting_for_its_next_attempt_reads_retrying(cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_RETRY_BACKOFF_S="60")
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {
        "command": "exit 1", "delivery": "at_least_once", "max_attempts": 3})
    task = cluster.wait_task(body["id"], ("retrying",))
    assert (task["attempt"], task["error"], task["started_at"]) == (1, "exit 1", None)
    backoff = (datetime.fromisoformat(task["next_attempt_at"])
               - datetime.fromisoformat(task["attempts"][0]["finished_at"]))
    assert 50 < backoff.total_seconds() <= 60, backoff
    _, listed = cluster.http("GET", "/tasks?status=retrying")
    assert [t["id"] for t in listed["tasks"]] == [body["id"]]
    _, waiting = cluster.http("GET", "/tasks?status=scheduled")
    assert waiting["tasks"] == []
    cancelled = cluster.http("POST", f"/tasks/{body['id']}/cancel")[1]
    assert (cancelled["status"], cancelled["next_attempt_at"]) == ("cancelled", None)


def test_the_command_environment_carries_the_task_but_not_the_dsn(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=1)
    status, body = cluster.http("POST", "/schedule", {"command": "env", "env": {"GREETING": "hi"}})
    assert status == 201
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "succeeded", task
    lines = set(task["output"].splitlines())
    assert f"CHRONOSYNC_TASK_ID={body['id']}" in lines
    assert "CHRONOSYNC_ATTEMPT=1" in lines
    assert f"CHRONOSYNC_SCHEDULED_AT={task['scheduled_at']}" in lines
    assert "GREETING=hi" in lines
    assert not any(line.startswith("CHRONOSYNC_DSN=") for line in lines)


def test_an_idempotent_replay_returns_the_first_task_and_a_changed_one_conflicts(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _ready(cluster), timeout=30, what="the scheduler")
    body = {"command": "true", "scheduled_at": "2099-01-01T00:00:00Z", "idempotency_key": "k1"}
    first = cluster.http("POST", "/schedule", body)
    again = cluster.http("POST", "/schedule", body)
    changed = cluster.http("POST", "/schedule", {**body, "command": "false"})
    assert first[0] == 201 and again[0] == 200
    assert again[1]["id"] == first[1]["id"]
    assert changed[0] == 409 and changed[1]["field"] == "idempotency_key"
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 1


def _ready(cluster: Cluster) -> bool:
    try:
        return cluster.http("GET", "/readyz")[0] == 200
    except OSError:
        return False


def test_an_idle_coordinator_wakes_on_notify_and_at_the_due_instant_not_by_polling(
    cluster: Cluster,
) -> None:
    # With a 60 s idle bound, only NOTIFY (a new task) and the computed sleep until the
    # next scheduled_at can make these start within a second.
    cluster.start("scheduler")
    cluster.start("coordinator", CHRONOSYNC_MAX_IDLE_S="60")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    lateness = []
    for delay in (0, 2):
        due = (db_now(cluster) + timedelta(seconds=delay)).isoformat()
        status, body = cluster.http("POST", "/schedule", {"command": "true",
                                                          "scheduled_at": due})
        assert status == 201
        task = cluster.wait_task(body["id"], ("succeeded",), timeout=10)
        started = datetime.fromisoformat(task["started_at"])
        lateness.append(started - datetime.fromisoformat(task["scheduled_at"]))
    assert all(timedelta(0) <= late < timedelta(seconds=1) for late in lateness), lateness
