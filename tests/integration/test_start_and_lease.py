"""A claim's life around its start, end to end: a worker paused before recording a start
never runs a claim taken from it meanwhile, and a started task is never handed out again
nor judged lost however long its healthy command runs.

Timings: heartbeat 0.2 s and a TTL of 1 s (so an unstarted claim's lease is 1 s too);
several TTLs pass by the database clock while coordinators sweep.
"""

from __future__ import annotations

import random
import signal
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from harness import Cluster, log_of, node_id, wait_for

from chronocore import failpoints
from chronosync_dev.devcluster import NodeProcess

TTL = {"CHRONOSYNC_NODE_TTL_S": "1"}
# How long a healthy command runs: several TTLs, each one a chance to be judged dead.
TTLS_RUN = 8
# Longer than it takes the test to see the failpoint's log line and stop the worker, and
# than an unstarted claim's lease (the TTL).
BEFORE_START_PAUSE = {failpoints.BEFORE_START: "2"}
LONG_TTL = {"CHRONOSYNC_NODE_TTL_S": "60"}
FAST_RETRY = {"CHRONOSYNC_RETRY_BACKOFF_S": "0.2"}
# A worker that heartbeats only every 30 s: no heartbeat of its own notices a cancel (and
# stops the run) between the cancel and its start, so only the refused start stands
# between the cancelled task and its command.
QUIET_WORKER = {"CHRONOSYNC_HEARTBEAT_S": "30"}


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def claim_of(cluster: Cluster, task_id: int) -> dict[str, Any]:
    return cluster.query("SELECT picked_at, claim_token, claimed_by, started_at, attempt,"
                         " worker_id FROM tasks WHERE id = %s", (task_id,))[0]


def start_nodes(cluster: Cluster, *, coordinators: int = 1, ttl: dict[str, str] = TTL,
                **worker_env: str) -> NodeProcess:
    # Task ids unlike other tests' (whose first task is 1): a reaper finds a dead worker's
    # unreported commands by task id and attempt on the whole machine, so a suite running
    # beside this one could otherwise kill these long commands.
    cluster.query("SELECT setval('tasks_id_seq', %s)", (random.randrange(10**9, 10**12),))
    cluster.start("scheduler", **ttl)
    for _ in range(coordinators):
        cluster.start("coordinator", **ttl, **FAST_RETRY)
    worker = cluster.start("worker", **ttl, **worker_env)
    # Registered is enough (a quiet worker's heartbeat looks stale to wait_ready).
    cluster.wait_ready(coordinators=coordinators, workers=0)
    node_id(cluster, worker)
    return worker


def runs(marker: Path) -> list[str]:
    return marker.read_text().split() if marker.exists() else []


def pause_before_start(cluster: Cluster, worker: NodeProcess, task_id: int) -> Any:
    """Wait for the worker to accept the task and reach the failpoint before its start,
    then stop it there (SIGSTOP); returns the claim token it holds."""
    wait_for(lambda: "failpoint" in log_of(worker), timeout=20,
             what="the worker to accept the task and pause before its start")
    worker.signal(signal.SIGSTOP)
    held = claim_of(cluster, task_id)
    assert held["started_at"] is None and held["claim_token"] is not None, held
    return held["claim_token"]


def refused_start(worker: NodeProcess, task_id: int) -> bool:
    return f"task {task_id}: start refused" in log_of(worker)


def test_a_worker_paused_before_its_start_never_runs_a_claim_requeued_meanwhile(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The claim's lease runs out while the worker is stopped: the claim goes back to the
    queue. Resumed, the worker's start under the old token is refused and the command
    does not run; the task then runs once, attempt 1, on another worker."""
    paused = start_nodes(cluster, CHRONOSYNC_WORKER_CAPACITY="1", **BEFORE_START_PAUSE)
    marker = tmp_path / "runs"
    _, body = cluster.http("POST", "/schedule",
                           {"command": f'echo "$CHRONOSYNC_ATTEMPT" >> {marker}'})
    token = pause_before_start(cluster, paused, body["id"])
    try:
        wait_for(lambda: claim_of(cluster, body["id"])["claim_token"] != token, timeout=15,
                 what="the stopped worker's claim to be requeued")
    finally:
        paused.signal(signal.SIGCONT)
    # No other worker yet: the task waits unclaimed (or claimed anew) when the stale
    # start arrives, so only its token can refuse it.
    wait_for(lambda: refused_start(paused, body["id"]), timeout=15,
             what="the resumed worker's start under the old token to be refused")
    # Stopping waits for the worker's slots: whatever its refused start might have
    # (wrongly) spawned has ended by the time it exits.
    paused.signal(signal.SIGTERM)
    assert paused.proc.wait(timeout=20) == 0
    other_id = node_id(cluster, cluster.start("worker", **TTL))
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert task["status"] == "succeeded" and task["worker_id"] == other_id, task
    assert runs(marker) == ["1"], "the refused start was spawned"
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [(1, None)]


def test_a_worker_paused_before_its_start_never_runs_a_task_cancelled_meanwhile(
    cluster: Cluster, tmp_path: Path
) -> None:
    # A lease longer than the pause: the witness below runs on the paused worker too.
    worker = start_nodes(cluster, ttl=LONG_TTL, CHRONOSYNC_WORKER_CAPACITY="1",
                         **BEFORE_START_PAUSE, **QUIET_WORKER)
    marker = tmp_path / "runs"
    _, doomed = cluster.http("POST", "/schedule", {"command": f"echo doomed >> {marker}"})
    pause_before_start(cluster, worker, doomed["id"])
    try:
        status, cancelled = cluster.http("POST", f"/tasks/{doomed['id']}/cancel")
        assert status == 200 and cancelled["status"] == "cancelled", cancelled
    finally:
        worker.signal(signal.SIGCONT)
    wait_for(lambda: refused_start(worker, doomed["id"]), timeout=15,
             what="the resumed worker's start of the cancelled task to be refused")
    # Capacity 1: the witness runs only once the doomed task's slot is free, that is after
    # anything the refused start might have (wrongly) spawned has ended.
    _, witness = cluster.http("POST", "/schedule", {"command": f"echo witness >> {marker}"})
    assert cluster.wait_task(witness["id"], ("succeeded", "failed"))["status"] == "succeeded"
    assert runs(marker) == ["witness"], "the cancelled task's refused start was spawned"
    after = cluster.task(doomed["id"])
    assert after["status"] == "cancelled"
    assert after["started_at"] is None and after["attempts"] == []


LONG_COMMAND = ('echo "$CHRONOSYNC_ATTEMPT" >> {began}; '
                "while [ ! -e {release} ]; do sleep 0.05; done; echo done")


def run_several_ttls(cluster: Cluster, tmp_path: Path, task_id: int, *,
                     each_poll: Any = None) -> None:
    """Let the started task's command run TTLS_RUN TTLs by the database clock (calling
    ``each_poll()`` meanwhile), then let it finish."""
    began_at = datetime.fromisoformat(cluster.wait_task(task_id, ("running",),
                                                        timeout=20)["started_at"])
    until = began_at + TTLS_RUN * timedelta(seconds=float(TTL["CHRONOSYNC_NODE_TTL_S"]))

    def ran_long_enough() -> bool:
        if each_poll is not None:
            each_poll()
        return db_now(cluster) >= until

    wait_for(ran_long_enough, timeout=60, what=f"the command to run {TTLS_RUN} TTLs")
    (tmp_path / "release").touch()


def recovery_lines(cluster: Cluster, task_id: int) -> list[str]:
    return [line for line in cluster.processes.logs().splitlines()
            if f"recovery: task {task_id} " in line]


def test_a_healthy_command_running_several_ttls_ends_once_succeeded_on_its_worker(
    cluster: Cluster, tmp_path: Path
) -> None:
    worker = start_nodes(cluster, coordinators=2)
    began = tmp_path / "began"
    _, body = cluster.http("POST", "/schedule", {
        "command": LONG_COMMAND.format(began=began, release=tmp_path / "release")})
    run_several_ttls(cluster, tmp_path, body["id"])
    task = cluster.wait_task(body["id"], ("succeeded", "failed", "cancelled"), timeout=20)
    assert (task["status"], task["error"], task["output"]) == ("succeeded", None, "done\n")
    assert task["worker_id"] == node_id(cluster, worker)
    assert [(a["attempt"], a["error"], a["worker_id"]) for a in task["attempts"]] == [
        (1, None, task["worker_id"])]
    assert runs(began) == ["1"]
    assert recovery_lines(cluster, body["id"]) == []


def test_a_started_task_is_never_claimed_again_however_long_it_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """at_least_once, so that a wrong recovery would show as a second claim and attempt
    rather than a failure."""
    start_nodes(cluster, coordinators=2)
    began = tmp_path / "began"
    _, body = cluster.http("POST", "/schedule", {
        "command": LONG_COMMAND.format(began=began, release=tmp_path / "release"),
        "delivery": "at_least_once", "max_attempts": 3})
    cluster.wait_task(body["id"], ("running",), timeout=20)
    at_start = claim_of(cluster, body["id"])
    seen: list[dict[str, Any]] = []

    def unchanged() -> None:
        now = claim_of(cluster, body["id"])
        assert now == at_start, (f"the started task's claim changed: {at_start} -> {now}; "
                                 f"recovery: {recovery_lines(cluster, body['id'])}")
        seen.append(now)

    run_several_ttls(cluster, tmp_path, body["id"], each_poll=unchanged)
    assert len(seen) > TTLS_RUN  # the claim was looked at all along, not once
    task = cluster.wait_task(body["id"], ("succeeded", "failed", "cancelled"), timeout=20)
    assert task["status"] == "succeeded", task
    assert task["attempt"] == 1 and runs(began) == ["1"]
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [(1, None)]


def test_a_paused_worker_s_late_outcome_is_fenced_off_while_the_retry_still_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Attempt 1's worker is stopped, judged dead, and the task retried on another
    worker. Resumed while attempt 2 still runs, the first worker stops attempt 1 and tries
    to record its outcome under its old token: refused, so attempt 2's outcome is the
    task's."""
    paused = start_nodes(cluster)
    began = tmp_path / "began"
    _, body = cluster.http("POST", "/schedule", {
        "command": LONG_COMMAND.format(began=began, release=tmp_path / "release")
        + '-"$CHRONOSYNC_ATTEMPT"', "delivery": "at_least_once", "max_attempts": 3})
    wait_for(lambda: runs(began) == ["1"], timeout=20, what="attempt 1 to begin")
    paused.signal(signal.SIGSTOP)
    try:
        other_id = node_id(cluster, cluster.start("worker", **TTL))
        wait_for(lambda: runs(began) == ["1", "2"], timeout=20,
                 what="attempt 2 to begin on the other worker")
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(lambda: f"task {body['id']}: outcome fenced off" in log_of(paused),
             timeout=15, what="the resumed worker's late outcome to be refused")
    assert cluster.task(body["id"])["status"] == "running"
    (tmp_path / "release").touch()
    task = cluster.wait_task(body["id"], ("succeeded", "failed", "cancelled"), timeout=20)
    assert (task["status"], task["output"], task["worker_id"]) == (
        "succeeded", "done-2\n", other_id), task
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [
        (1, "worker_lost"), (2, None)]
