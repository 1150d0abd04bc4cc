"""Recurring jobs on a real cluster: racing schedulers, policies, pause, misfires."""

from __future__ import annotations

import signal
import statistics
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness import Cluster, wait_for

from chronocore.jobs import MISFIRE_TOLERANCE


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def create_job(cluster: Cluster, **body: Any) -> dict[str, Any]:
    status, job = cluster.http("POST", "/schedule", body)
    assert status == 201, job
    assert job["kind"] == "job"
    return job


def job_tasks(cluster: Cluster, job_id: int) -> list[dict[str, Any]]:
    return cluster.query(
        "SELECT *, task_status(picked_at, started_at, completed_at, failed_at, cancelled_at,"
        " attempt) AS status FROM tasks WHERE job_id = %s ORDER BY scheduled_at", (job_id,))


def wait_until(cluster: Cluster, instant: datetime) -> None:
    """Let the scenario run until the database clock reaches ``instant``."""
    wait_for(lambda: db_now(cluster) >= instant, timeout=120,
             what=f"the clock to reach {instant}", interval=0.2)


def wait_settled(cluster: Cluster, job_id: int) -> list[dict[str, Any]]:
    def settled() -> list[dict[str, Any]] | None:
        tasks = job_tasks(cluster, job_id)
        if all(t["status"] in ("succeeded", "failed", "cancelled") for t in tasks):
            return tasks
        return None

    return wait_for(settled, timeout=60, what=f"job {job_id}'s tasks to finish")


def pause(cluster: Cluster, job_id: int) -> dict[str, Any]:
    status, job = cluster.http("PATCH", f"/jobs/{job_id}", {"paused": True})
    assert status == 200 and job["paused"] is True, job
    return job


def test_three_schedulers_racing_on_a_per_second_job_make_each_second_one_task(
    cluster: Cluster, tmp_path: Path
) -> None:
    for _ in range(3):
        cluster.start("scheduler")
    for _ in range(2):
        cluster.start("coordinator")
    for _ in range(2):
        cluster.start("worker")
    cluster.wait_ready(coordinators=2, workers=2)
    marker = tmp_path / "ran"
    job = create_job(cluster, command=f'echo "$CHRONOSYNC_TASK_ID" >> {marker}',
                     cron="* * * * * *")
    start = db_now(cluster)
    wait_until(cluster, start + timedelta(seconds=20))
    pause(cluster, job["id"])
    tasks = [t for t in wait_settled(cluster, job["id"]) if t["status"] != "cancelled"]

    seconds = [t["scheduled_at"] for t in tasks]
    assert len(seconds) == len(set(seconds)), "an occurrence became two tasks"
    assert len(seconds) >= 20
    steps = {b - a for a, b in pairwise(seconds)}
    assert steps == {timedelta(seconds=1)}, f"gaps or doubles between ticks: {steps}"
    assert all(t["status"] == "succeeded" for t in tasks)
    ran = [int(x) for x in marker.read_text().split()]
    assert sorted(ran) == sorted(t["id"] for t in tasks), "each tick runs exactly once"
    lateness = sorted((t["started_at"] - t["scheduled_at"]).total_seconds() for t in tasks)
    assert lateness[0] >= 0, "a tick started before its time"
    p50 = statistics.median(lateness)
    p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))]
    print(f"per-second job lateness over {len(lateness)} ticks: p50 {p50 * 1000:.1f} ms,"
          f" p99 {p99 * 1000:.1f} ms, max {lateness[-1] * 1000:.1f} ms")
    assert p99 < 1.0


def test_pausing_stops_new_ticks_within_a_second_and_resuming_restarts_them(
    cluster: Cluster,
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    job = create_job(cluster, command="true", cron="* * * * * *")
    wait_for(lambda: any(t["status"] == "succeeded" for t in job_tasks(cluster, job["id"])),
             timeout=10, what="the first tick")
    paused_at = db_now(cluster)
    pause(cluster, job["id"])
    # Past the horizon (5 s by default): ticks a paused job wrongly went on making would
    # fall due and start by then, not only those made ahead of the pause.
    wait_until(cluster, paused_at + timedelta(seconds=7))
    started = [t["started_at"] for t in job_tasks(cluster, job["id"]) if t["started_at"]]
    assert max(started) <= paused_at + timedelta(seconds=1)
    skipped = [t for t in job_tasks(cluster, job["id"]) if t["error"] == "skipped: job paused"]
    assert skipped, "the ticks made ahead of time were cancelled"

    status, resumed = cluster.http("PATCH", f"/jobs/{job['id']}", {"paused": False})
    assert status == 200 and resumed["paused"] is False
    resumed_at = db_now(cluster)
    wait_until(cluster, resumed_at + timedelta(seconds=5))
    # Every tick after the resume runs, including those made (then cancelled by the
    # pause) ahead of time: they come back rather than being lost to the unique key.
    ran = {t["scheduled_at"] for t in job_tasks(cluster, job["id"]) if t["started_at"]}
    first = resumed_at.replace(microsecond=0) + timedelta(seconds=1)
    expected = {first + timedelta(seconds=i) for i in range(3)}
    assert expected <= ran, sorted(expected - ran)


def test_deleting_a_job_cancels_the_ticks_it_made_ahead_and_none_starts_after(
    cluster: Cluster,
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    job = create_job(cluster, command="true", cron="* * * * * *")
    wait_for(lambda: any(t["status"] == "succeeded" for t in job_tasks(cluster, job["id"])),
             timeout=10, what="the first tick")
    wait_for(lambda: cluster.query(
        "SELECT 1 FROM tasks WHERE job_id = %s AND scheduled_at > now() + interval '2 s'",
        (job["id"],)), timeout=10, what="ticks made ahead")
    status, _ = cluster.http("DELETE", f"/jobs/{job['id']}")
    assert status == 204
    deleted_at = db_now(cluster)
    # Past the horizon (5 s by default): every tick made ahead of the deletion would have
    # fallen due and started by then.
    wait_until(cluster, deleted_at + timedelta(seconds=7))
    tasks = job_tasks(cluster, job["id"])
    late = [(t["scheduled_at"], t["started_at"]) for t in tasks
            if t["started_at"] is not None and t["started_at"] > deleted_at]
    assert not late, f"ticks of the deleted job started after the 204: {late}"
    ahead = [t for t in tasks if t["scheduled_at"] > deleted_at]
    assert ahead, "no tick was made ahead of the deletion: the test proves nothing"
    assert all(t["status"] == "cancelled" and t["error"] == "skipped: job deleted"
               for t in ahead), [(t["scheduled_at"], t["status"], t["error"]) for t in ahead]


def overlaps(tasks: list[dict[str, Any]]) -> int:
    """How many pairs of runs of the job overlapped in time."""
    runs = sorted((t["started_at"], t["completed_at"] or t["failed_at"])
                  for t in tasks if t["started_at"])
    return sum(1 for (_, end), (start, _) in pairwise(runs) if start < end)


def run_policy(cluster: Cluster, policy: str, command: str, seconds: int) -> list[dict]:
    job = create_job(cluster, command=command, cron="* * * * * *",
                     concurrency_policy=policy)
    start = db_now(cluster)
    wait_until(cluster, start + timedelta(seconds=seconds))
    pause(cluster, job["id"])
    return wait_settled(cluster, job["id"])


def stop_leftovers(cluster: Cluster, job_id: int) -> None:
    """Cancel what still runs, so the test need not wait for it."""
    for task in job_tasks(cluster, job_id):
        if task["status"] in ("picked", "running"):
            cluster.http("POST", f"/tasks/{task['id']}/cancel")


def test_forbid_skips_a_tick_while_the_previous_run_is_still_going(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=2)
    tasks = run_policy(cluster, "forbid", "sleep 2.5", seconds=8)
    assert overlaps(tasks) == 0
    skipped = [t for t in tasks if t["error"] == "skipped: concurrency_policy forbid"]
    ran = [t for t in tasks if t["status"] == "succeeded"]
    assert len(skipped) >= 3 and len(ran) >= 2


def test_allow_lets_runs_overlap(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=2)
    tasks = run_policy(cluster, "allow", "sleep 2.5", seconds=6)
    assert overlaps(tasks) >= 3
    assert not any((t["error"] or "").startswith("skipped") for t in tasks
                   if t["status"] == "cancelled" and t["started_at"])


def test_replace_cancels_the_running_tick_when_the_next_is_due(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=2)
    job = create_job(cluster, command="sleep 30", cron="* * * * * *",
                     concurrency_policy="replace")
    wait_until(cluster, db_now(cluster) + timedelta(seconds=6))
    pause(cluster, job["id"])
    last_started = max(t["started_at"] for t in job_tasks(cluster, job["id"])
                       if t["started_at"])
    stop_leftovers(cluster, job["id"])
    tasks = wait_settled(cluster, job["id"])
    replaced = [t for t in tasks if t["started_at"] and t["started_at"] < last_started]
    assert len(replaced) >= 3
    # Each run was cut short by the next tick: none lasted anywhere near its 30 s.
    for t in replaced:
        ended = t["completed_at"] or t["failed_at"]
        assert t["status"] == "cancelled", t
        assert ended - t["started_at"] < timedelta(seconds=5)


def test_misfire_policies_after_every_scheduler_was_down_for_ten_seconds(
    cluster: Cluster,
) -> None:
    # A short horizon, so that ten seconds of downtime leave ticks unmade.
    schedulers = [cluster.start("scheduler", CHRONOSYNC_HORIZON_S="0.5") for _ in range(2)]
    cluster.start("coordinator")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    jobs = {policy: create_job(cluster, command="true", cron="*/2 * * * * *",
                               misfire_policy=policy)
            for policy in ("run_once", "skip", "run_all")}
    wait_for(lambda: all(job_tasks(cluster, j["id"]) for j in jobs.values()), timeout=10,
             what="every job's first tick")
    for node in schedulers:
        node.signal(signal.SIGKILL)
    down_at = db_now(cluster)
    wait_until(cluster, down_at + timedelta(seconds=10))
    cluster.start("scheduler", CHRONOSYNC_HORIZON_S="0.5")
    restarted_at = db_now(cluster)
    for job in jobs.values():
        wait_for(lambda job=job: any(t["scheduled_at"] > restarted_at + timedelta(seconds=3)
                                     for t in job_tasks(cluster, job["id"])),
                 timeout=20, what="ticks after the restart")
        pause(cluster, job["id"])

    def catch_ups(policy: str) -> list[dict[str, Any]]:
        # A catch-up is made more than MISFIRE_TOLERANCE after its time; a regular tick
        # ahead of it, or (on a busy machine) less late than that.
        return [t for t in wait_settled(cluster, jobs[policy]["id"])
                if t["created_at"] > t["scheduled_at"] + MISFIRE_TOLERANCE]

    assert len(catch_ups("run_once")) == 1
    assert catch_ups("skip") == []
    run_all = [t for t in job_tasks(cluster, jobs["run_all"]["id"])
               if t["error"] != "skipped: job paused"]
    ticks = [t["scheduled_at"] for t in run_all]
    assert {b - a for a, b in pairwise(ticks)} == {timedelta(seconds=2)}
    assert len(catch_ups("run_all")) >= 3  # ten seconds down: four or five missed ticks
    assert all(t["status"] == "succeeded" for t in catch_ups("run_all"))
