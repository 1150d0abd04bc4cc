"""Kill-node scenarios: real processes killed with SIGKILL (or paused with SIGSTOP) at the
instants that matter, and what PostgreSQL recorded afterwards.

Timings are the harness's (heartbeat 0.2 s, TTL 1.5 s) so recovery shows in seconds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

from harness import Cluster, log_of, node_id, process_gone, wait_for

from chronocore import failpoints

# Recovery must come within the TTL plus a sweep or two; with the harness's 1.5 s TTL
# and 0.2 s heartbeat, 5 s is generous and still far below what a lease-less design needs.
RECOVERY_BOUND = timedelta(seconds=5)
FAST_RETRY = {"CHRONOSYNC_RETRY_BACKOFF_S": "0.2"}


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def read_ints(path: Path) -> list[int] | None:
    try:
        return [int(x) for x in path.read_text().split()] or None
    except FileNotFoundError:
        return None


def wait_running(cluster: Cluster, task_id: int) -> dict:
    return cluster.wait_task(task_id, ("running",), timeout=20)


def start_base(cluster: Cluster, **coordinator_env: str) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator", **FAST_RETRY, **coordinator_env)


def test_a_killed_worker_s_at_most_once_task_fails_as_worker_lost_and_its_command_dies(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    worker = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    starts = tmp_path / "starts"
    _, body = cluster.http("POST", "/schedule", {
        "command": f"echo x >> {starts}; sleep 300 & echo $! $$ > {pids}; wait"})
    child, shell = wait_for(lambda: read_ints(pids), timeout=20, what="the command to start")
    killed_at = db_now(cluster)
    worker.signal(signal.SIGKILL)

    wait_for(lambda: process_gone(child) and process_gone(shell), timeout=5,
             what="the dead worker's command and its child to be killed")
    task = cluster.wait_task(body["id"], ("failed",), timeout=15)
    assert task["error"] == "worker_lost"
    assert datetime.fromisoformat(task["failed_at"]) - killed_at < RECOVERY_BOUND
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [(1, "worker_lost")]
    states = {n["pid"]: n["state"] for n in cluster.http("GET", "/nodes")[1]["nodes"]}
    assert states[worker.pid] == "dead"

    # A new worker arrives: the lost at_most_once task is not started again.
    cluster.start("worker")
    _, witness = cluster.http("POST", "/schedule", {"command": "true"})
    cluster.wait_task(witness["id"], ("succeeded",))
    assert starts.read_text().split() == ["x"]
    assert cluster.task(body["id"])["attempt"] == 1


def reaper_of(worker_pid: int) -> int:
    """The pid of a worker's reaper (its child running chronocore.reaper)."""
    for entry in Path("/proc").iterdir():
        try:
            if (entry.name.isdigit()
                    and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    == worker_pid
                    and b"chronocore.reaper" in (entry / "cmdline").read_bytes()):
                return int(entry.name)
        except (OSError, ValueError):
            continue
    raise AssertionError(f"worker {worker_pid} has no reaper")


def test_a_dying_worker_s_reaper_spares_another_cluster_s_command_of_the_same_task_id(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The reaper finds a dead worker's runs by their identity in /proc: another
    deployment's command on the same machine, with the same task id and attempt, is not
    one of them."""
    start_base(cluster)
    worker = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    _, body = cluster.http("POST", "/schedule", {
        "command": f"sleep 300 & echo $! > {pids}; wait"})
    [child] = wait_for(lambda: read_ints(pids), timeout=20, what="the command to start")
    impostor = subprocess.Popen(
        ["sleep", "300"], start_new_session=True,
        env={**os.environ, "CHRONOSYNC_TASK_ID": str(body["id"]), "CHRONOSYNC_ATTEMPT": "1",
             "CHRONOSYNC_WORKER_ID": "worker-of-another-cluster"})
    try:
        reaper = reaper_of(worker.pid)
        worker.signal(signal.SIGKILL)
        wait_for(lambda: process_gone(child), timeout=5, what="the dead worker's command")
        wait_for(lambda: process_gone(reaper), timeout=10,
                 what="the reaper to end its search")
        assert impostor.poll() is None, "another cluster's command was killed"
    finally:
        impostor.kill()
        impostor.wait()


ORPHAN_CHECK = (
    'if [ "$CHRONOSYNC_ATTEMPT" = 1 ]; then sleep 300 & echo $! > {child}; wait; '
    "else state=$(cut -d' ' -f3 /proc/$(cat {child})/stat 2>/dev/null); "
    'if [ -n "$state" ] && [ "$state" != Z ]; then echo orphan-alive; exit 3; fi; '
    "echo second; fi"
)


def test_a_killed_worker_s_at_least_once_task_is_retried_after_its_orphan_died(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    first = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    child = tmp_path / "child"
    _, body = cluster.http("POST", "/schedule", {
        "command": ORPHAN_CHECK.format(child=child), "delivery": "at_least_once",
        "max_attempts": 3})
    wait_for(lambda: read_ints(child), timeout=20, what="attempt 1 to start its child")
    second = cluster.start("worker")
    second_id = node_id(cluster, second)
    first.signal(signal.SIGKILL)

    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert task["status"] == "succeeded", task
    assert task["output"] == "second\n"  # attempt 2 found attempt 1's child dead
    assert task["worker_id"] == second_id
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [
        (1, "worker_lost"), (2, None)]
    assert task["attempts"][0]["worker_id"] != second_id


def test_a_paused_worker_s_late_writes_are_fenced_off(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    paused = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    began, done = tmp_path / "attempt1-began", tmp_path / "attempt1-done"
    command = (f'if [ "$CHRONOSYNC_ATTEMPT" = 1 ]; then touch {began}; sleep 1; touch {done}; '
               "echo first; else echo second; fi")
    _, body = cluster.http("POST", "/schedule", {
        "command": command, "delivery": "at_least_once", "max_attempts": 3})
    # "running" means the start is recorded; the command itself may spawn a moment later.
    wait_for(began.exists, timeout=20, what="attempt 1's command to begin")
    paused.signal(signal.SIGSTOP)
    try:
        replacement = cluster.start("worker")
        replacement_id = node_id(cluster, replacement)
        task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
        assert task["status"] == "succeeded" and task["worker_id"] == replacement_id
        # Attempt 1 ran on while its worker was paused; let it end before resuming.
        wait_for(done.exists, timeout=10, what="attempt 1's command to end")
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(lambda: f"task {body['id']}: outcome fenced off" in log_of(paused),
             timeout=10, what="the resumed worker to try its late write")
    after = cluster.task(body["id"])
    assert after["status"] == "succeeded"
    assert after["output"] == "second\n" and after["worker_id"] == replacement_id
    assert [(a["attempt"], a["error"]) for a in after["attempts"]] == [
        (1, "worker_lost"), (2, None)]


def test_a_paused_worker_cannot_turn_a_lost_at_most_once_task_into_a_success(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    paused = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    began, done = tmp_path / "began", tmp_path / "done"
    _, body = cluster.http("POST", "/schedule",
                           {"command": f"touch {began}; sleep 1; touch {done}; echo late"})
    wait_for(began.exists, timeout=20, what="the command to begin")
    paused.signal(signal.SIGSTOP)
    try:
        task = cluster.wait_task(body["id"], ("failed",), timeout=15)
        assert task["error"] == "worker_lost"
        wait_for(done.exists, timeout=10, what="the command to end")
    finally:
        paused.signal(signal.SIGCONT)
    wait_for(lambda: f"task {body['id']}: outcome fenced off" in log_of(paused),
             timeout=10, what="the resumed worker to try its late write")
    after = cluster.task(body["id"])
    assert after["status"] == "failed" and after["error"] == "worker_lost"
    assert after["output"] is None and after["completed_at"] is None


def test_a_stopping_worker_lets_running_commands_finish_within_its_grace(
    cluster: Cluster,
) -> None:
    start_base(cluster)
    worker = cluster.start("worker", CHRONOSYNC_SHUTDOWN_GRACE_S="20")
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {"command": "sleep 1; echo finished"})
    wait_running(cluster, body["id"])
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(timeout=20) == 0
    task = cluster.task(body["id"])
    assert task["status"] == "succeeded" and task["output"] == "finished\n"
    states = {n["pid"]: n["state"] for n in cluster.http("GET", "/nodes")[1]["nodes"]}
    assert states[worker.pid] == "dead"


def test_a_stopping_worker_hands_back_what_it_cannot_finish(cluster: Cluster) -> None:
    start_base(cluster)
    leaving = cluster.start("worker", CHRONOSYNC_SHUTDOWN_GRACE_S="0.5")
    cluster.wait_ready(coordinators=1, workers=1)
    command = 'if [ "$CHRONOSYNC_ATTEMPT" = 1 ]; then sleep 300; else echo second; fi'
    _, body = cluster.http("POST", "/schedule", {
        "command": command, "delivery": "at_least_once", "max_attempts": 2})
    wait_running(cluster, body["id"])
    staying_id = node_id(cluster, cluster.start("worker"))
    leaving.signal(signal.SIGTERM)
    assert leaving.proc.wait(timeout=20) == 0
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert task["status"] == "succeeded" and task["worker_id"] == staying_id
    assert [(a["attempt"], a["error"]) for a in task["attempts"]] == [
        (1, "worker_lost"), (2, None)]


def test_a_stopping_coordinator_hands_back_its_claims_at_once(cluster: Cluster) -> None:
    # A long TTL: if the task runs soon, the hand-back did it, not a lease expiring.
    slow = {"CHRONOSYNC_NODE_TTL_S": "60"}
    cluster.start("scheduler")
    holder = cluster.start("coordinator", **slow, **{failpoints.AFTER_CLAIM: "120"})
    cluster.start("worker", **slow)
    cluster.wait_ready(coordinators=1, workers=1)
    holder_id = node_id(cluster, holder)
    _, body = cluster.http("POST", "/schedule", {"command": "true"})
    wait_for(lambda: cluster.query("SELECT claimed_by FROM tasks WHERE id = %s",
                                   (body["id"],))[0]["claimed_by"] == holder_id,
             timeout=10, what="the first coordinator to claim the task")
    cluster.start("coordinator", **slow)
    holder.signal(signal.SIGTERM)
    task = cluster.wait_task(body["id"], ("succeeded",), timeout=10)
    assert task["attempt"] == 1
    assert holder.proc.wait(timeout=10) == 0


def test_a_worker_dying_between_accepting_and_starting_costs_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    doomed = cluster.start("worker", **{failpoints.BEFORE_START: "120"})
    cluster.wait_ready(coordinators=1, workers=1)
    marker = tmp_path / "ran"
    _, body = cluster.http("POST", "/schedule", {"command": f"echo once >> {marker}"})
    wait_for(lambda: "failpoint" in log_of(doomed), timeout=20,
             what="the worker to accept the task and pause before its start")
    survivor_id = node_id(cluster, cluster.start("worker"))
    doomed.signal(signal.SIGKILL)
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=15)
    assert task["status"] == "succeeded" and task["worker_id"] == survivor_id
    assert task["attempt"] == 1
    assert marker.read_text().split() == ["once"]


def test_a_worker_paused_between_start_and_spawn_never_runs_the_recovered_attempt(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The start is committed, then the worker stops (SIGSTOP) before spawning, long
    enough to be judged dead: its attempt is recovered and retried elsewhere. Resumed, it
    must not spawn the stale attempt beside the retry."""
    start_base(cluster)
    doomed = cluster.start("worker", **{failpoints.AFTER_START: "2"})
    cluster.wait_ready(coordinators=1, workers=1)
    marker = tmp_path / "attempts"
    _, body = cluster.http("POST", "/schedule", {
        "command": f'echo "$CHRONOSYNC_ATTEMPT" >> {marker}', "delivery": "at_least_once"})
    wait_for(lambda: "failpoint" in log_of(doomed), timeout=20,
             what="the worker to record the start and pause before the spawn")
    doomed.signal(signal.SIGSTOP)
    try:
        cluster.start("worker")
        task = cluster.wait_task(body["id"], ("succeeded",), timeout=20)
        assert task["attempt"] == 2
    finally:
        doomed.signal(signal.SIGCONT)
    wait_for(lambda: f"task {body['id']}: attempt 1 ended" in log_of(doomed),
             timeout=10, what="the resumed worker to be done with the recovered attempt")
    assert read_ints(marker) == [2], "the recovered attempt ran beside its retry"
    assert f"task {body['id']}: attempt 1 ended: worker_lost" in log_of(doomed)
    assert "confirming the claim" in log_of(doomed)


def test_a_worker_frozen_between_its_last_check_and_the_spawn_never_runs_the_attempt(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Frozen (SIGSTOP) after its last check that the claim holds and before the spawn:
    no check in the worker can see that coming. Resumed after its attempt was recovered
    and retried elsewhere, it spawns all the same, and the command's gate (in the child,
    just before the command) must refuse to run it."""
    start_base(cluster)
    doomed = cluster.start("worker", **{failpoints.BEFORE_SPAWN: "2"})
    cluster.wait_ready(coordinators=1, workers=1)
    marker = tmp_path / "attempts"
    _, body = cluster.http("POST", "/schedule", {
        "command": f'echo "$CHRONOSYNC_ATTEMPT" >> {marker}', "delivery": "at_least_once"})
    wait_for(lambda: "failpoint" in log_of(doomed), timeout=20,
             what="the worker to check its claim and pause before the spawn")
    doomed.signal(signal.SIGSTOP)
    try:
        cluster.start("worker")
        task = cluster.wait_task(body["id"], ("succeeded",), timeout=20)
        assert task["attempt"] == 2
    finally:
        doomed.signal(signal.SIGCONT)
    wait_for(lambda: f"task {body['id']}: attempt 1 ended" in log_of(doomed),
             timeout=10, what="the resumed worker to be done with the recovered attempt")
    assert read_ints(marker) == [2], "the recovered attempt ran beside its retry"
    assert f"task {body['id']}: attempt 1 ended: worker_lost" in log_of(doomed)


def test_a_spawn_late_for_its_start_still_runs_once_the_claim_is_confirmed(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A start's lease is half the TTL; a spawn later than that asks the database first
    and, the claim still being the worker's, runs the command as usual."""
    start_base(cluster)
    worker = cluster.start("worker", **{failpoints.AFTER_START: "1"})  # lease: 0.75 s
    cluster.wait_ready(coordinators=1, workers=1)
    marker = tmp_path / "attempts"
    _, body = cluster.http("POST", "/schedule",
                           {"command": f'echo "$CHRONOSYNC_ATTEMPT" >> {marker}'})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert (task["status"], task["attempt"]) == ("succeeded", 1)
    assert read_ints(marker) == [1]
    assert any(f"task {body['id']}: " in line and "confirming the claim" in line
               for line in log_of(worker).splitlines())


def test_a_command_spawned_just_before_its_worker_died_dies_too(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The reaper learns a command's process group after the spawn; a worker killed in
    between must not leave the command running unattended (an at_least_once retry would
    run beside it)."""
    start_base(cluster)
    doomed = cluster.start("worker", **{failpoints.AFTER_SPAWN: "120"})
    cluster.wait_ready(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    cluster.http("POST", "/schedule", {
        "command": f"sleep 300 & echo $! $$ > {pids}; wait", "delivery": "at_least_once"})
    child, shell = wait_for(lambda: read_ints(pids), timeout=20, what="the command to start")
    wait_for(lambda: "failpoint" in log_of(doomed), timeout=20,
             what="the worker to pause between the spawn and telling the reaper")
    doomed.signal(signal.SIGKILL)
    wait_for(lambda: process_gone(child) and process_gone(shell), timeout=5,
             what="the command the reaper was never told of to be killed with its child")


def test_a_killed_worker_s_command_dies_with_what_it_started_in_its_own_session(
    cluster: Cluster, tmp_path: Path
) -> None:
    start_base(cluster)
    worker = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    cluster.http("POST", "/schedule", {
        "command": f"setsid sleep 300 > /dev/null 2>&1 & echo $! $$ > {pids}; sleep 300",
        "delivery": "at_least_once"})
    escaped, shell = wait_for(lambda: read_ints(pids), timeout=20,
                              what="the command to start")
    worker.signal(signal.SIGKILL)
    wait_for(lambda: process_gone(escaped) and process_gone(shell), timeout=10,
             what="the dead worker's command and what left its group to be killed")


def test_an_unreachable_worker_is_skipped_and_every_task_runs_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        ghost_address = f"127.0.0.1:{closed.getsockname()[1]}"
    # A registered worker that heartbeats (far into the future) but never answers; with
    # the most free slots it is offered work first.
    cluster.query(
        "INSERT INTO nodes (id, kind, host, pid, address, capacity, last_heartbeat_at)"
        " VALUES ('worker-ghost', 'worker', 'ghost', 1, %s, 1000,"
        " now() + interval '1 hour')", (ghost_address,))
    cluster.start_default(coordinators=1, workers=1)
    marker = tmp_path / "ran"
    ids = [cluster.http("POST", "/schedule",
                        {"command": f'echo "$CHRONOSYNC_TASK_ID" >> {marker}'})[1]["id"]
           for _ in range(20)]
    for task_id in ids:
        assert cluster.wait_task(task_id, ("succeeded", "failed"))["status"] == "succeeded"
    assert sorted(read_ints(marker) or []) == sorted(ids)
    assert not cluster.query("SELECT id FROM tasks WHERE worker_id = 'worker-ghost'")


def test_a_coordinator_killed_between_claim_and_dispatch_costs_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start("scheduler")
    holder = cluster.start("coordinator", **{failpoints.AFTER_CLAIM: "120"})
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    holder_id = node_id(cluster, holder)
    marker = tmp_path / "ran"
    _, body = cluster.http("POST", "/schedule", {"command": f"echo once >> {marker}"})
    wait_for(lambda: cluster.query("SELECT claimed_by FROM tasks WHERE id = %s",
                                   (body["id"],))[0]["claimed_by"] == holder_id,
             timeout=10, what="the doomed coordinator to claim the task")
    cluster.start("coordinator")
    killed_at = db_now(cluster)
    holder.signal(signal.SIGKILL)
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=15)
    assert task["status"] == "succeeded" and task["attempt"] == 1
    assert datetime.fromisoformat(task["started_at"]) - killed_at < RECOVERY_BOUND
    assert marker.read_text().split() == ["once"]


def test_an_at_least_once_task_is_retried_with_exponential_backoff_until_max_attempts(
    cluster: Cluster,
) -> None:
    backoff = {"CHRONOSYNC_RETRY_BACKOFF_S": "0.5"}
    cluster.start("scheduler")
    cluster.start("coordinator", **backoff)
    cluster.start("worker", **backoff)
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {
        "command": 'echo "try $CHRONOSYNC_ATTEMPT"; exit 4', "delivery": "at_least_once",
        "max_attempts": 3})
    task = cluster.wait_task(body["id"], ("failed",), timeout=20)
    assert task["error"] == "exit 4" and task["output"] == "try 3\n"
    attempts = task["attempts"]
    assert [(a["attempt"], a["exit_code"], a["error"]) for a in attempts] == [
        (1, 4, "exit 4"), (2, 4, "exit 4"), (3, 4, "exit 4")]
    gaps = [datetime.fromisoformat(later["started_at"])
            - datetime.fromisoformat(earlier["finished_at"])
            for earlier, later in pairwise(attempts)]
    # 0.5 s, then 1 s: each wait at least the backoff, and the second longer than the first.
    assert gaps[0] >= timedelta(seconds=0.5) and gaps[1] >= timedelta(seconds=1.0), gaps
