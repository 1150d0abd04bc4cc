"""Timeouts and cancels act on the command's whole process group."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from harness import Cluster, wait_for
from harness import process_gone as gone


def read_pids(path: Path) -> list[int] | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    pids = [int(p) for p in text.split()]
    return pids if len(pids) == 2 else None


def test_a_timeout_kills_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_default(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    command = f"sleep 300 & echo $! $$ > {pids}; sleep 300"
    status, body = cluster.http("POST", "/schedule", {"command": command, "timeout_s": 1})
    assert status == 201, body
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert task["status"] == "failed"
    assert task["error"] == "timeout"
    child, shell = read_pids(pids) or pytest_fail("the command never wrote its pids")
    wait_for(lambda: gone(child) and gone(shell), timeout=5,
             what="the shell and its background child to be killed")
    assert task["attempts"][0]["error"] == "timeout"


def test_a_timeout_kills_what_the_command_started_in_sessions_of_its_own(
    cluster: Cluster, tmp_path: Path
) -> None:
    """``setsid`` takes a process out of the command's group; the worker is its subreaper,
    so it is found and killed all the same: one holding the output open, and one not."""
    cluster.start_default(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    command = (f"setsid sleep 300 & echo $! > {pids}; "
               f"setsid sleep 301 > /dev/null 2>&1 & echo $! >> {pids}; sleep 300")
    _, body = cluster.http("POST", "/schedule", {"command": command, "timeout_s": 1})
    escaped = wait_for(lambda: read_pids(pids), timeout=20, what="the command to start")
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert task["error"] == "timeout"
    wait_for(lambda: all(gone(pid) for pid in escaped), timeout=10,
             what="the processes that left the command's group to be killed")


def test_a_background_child_left_by_a_command_is_reaped(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Orphans are the worker's children (it is their subreaper): it must reap them."""
    cluster.start("scheduler")
    cluster.start("coordinator")
    worker = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    pid_file = tmp_path / "pid"
    _, body = cluster.http("POST", "/schedule", {
        "command": f"sleep 1 & echo $! > {pid_file}; echo bg"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["output"] == "bg\n"
    child = int(pid_file.read_text())

    def not_a_zombie_of_the_worker() -> bool:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return True
        ppid = stat.rsplit(")", 1)[1].split()[1]
        return int(ppid) != worker.pid

    wait_for(not_a_zombie_of_the_worker, timeout=10,
             what="the worker to reap the child its command left behind")


def test_what_a_command_leaves_running_in_its_group_dies_when_it_exits(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    command = f"sleep 300 > /dev/null 2>&1 & echo $! $$ > {pids}; echo left"
    _, body = cluster.http("POST", "/schedule", {"command": command})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=20)
    assert (task["status"], task["output"]) == ("succeeded", "left\n"), task
    child, _ = read_pids(pids) or pytest_fail("the command never wrote its pids")
    wait_for(lambda: gone(child), timeout=5,
             what="the child the command left running in its group to be killed")


def test_a_task_cancelled_before_its_start_never_runs(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_default(coordinators=1, workers=1)
    marker = tmp_path / "ran"
    now = cluster.query("SELECT now() AS now")[0]["now"]
    at = (now + timedelta(seconds=2)).isoformat()
    later = (now + timedelta(seconds=2.5)).isoformat()
    _, doomed = cluster.http("POST", "/schedule",
                             {"command": f"echo doomed >> {marker}", "scheduled_at": at})
    _, witness = cluster.http("POST", "/schedule",
                              {"command": f"echo witness >> {marker}", "scheduled_at": later})
    status, cancelled = cluster.http("POST", f"/tasks/{doomed['id']}/cancel")
    assert status == 200, cancelled
    assert cancelled["status"] == "cancelled" and cancelled["cancelled_at"] is not None
    # The witness falls due after the cancelled task: once it ran, the doomed one had its
    # chance to be (wrongly) claimed and started.
    assert cluster.wait_task(witness["id"], ("succeeded", "failed"))["status"] == "succeeded"
    after = cluster.task(doomed["id"])
    assert after["status"] == "cancelled"
    assert after["started_at"] is None and after["attempts"] == []
    assert marker.read_text().split() == ["witness"]


def test_a_running_task_cancelled_has_its_process_group_killed(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    pids = tmp_path / "pids"
    command = f"sleep 300 & echo $! $$ > {pids}; wait"
    _, body = cluster.http("POST", "/schedule", {"command": command})
    child, shell = wait_for(lambda: read_pids(pids), timeout=20, what="the command to start")
    status, cancelled = cluster.http("POST", f"/tasks/{body['id']}/cancel")
    assert status == 200
    assert cancelled["status"] == "cancelled"
    wait_for(lambda: gone(child) and gone(shell), timeout=10,
             what="the cancelled command's process group to die")

    def recorded() -> dict | None:
        task = cluster.task(body["id"])
        return task if task["failed_at"] is not None else None

    task = wait_for(recorded, timeout=10, what="the worker to record the cancelled run")
    assert task["status"] == "cancelled"
    assert task["error"] == "cancelled"
    assert task["completed_at"] is None
    assert task["attempts"][0]["error"] == "cancelled"


def pytest_fail(message: str) -> tuple[int, int]:
    import pytest

    pytest.fail(message)
