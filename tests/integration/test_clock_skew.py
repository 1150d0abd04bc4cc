"""Nodes whose own clocks are 10 minutes off (run under Debian's ``faketime``) change
nothing: time comes from the database clock (SPEC §2), so no task starts early or late, no
live node is judged dead, and every timestamp is the database's.

How the nodes are skewed, and why so: ``faketime -f +10m`` preloads libfaketime, which
shifts CLOCK_REALTIME (``time.time()``, ``datetime.now()``, ``date``) for the node and
every command it spawns. By default it shifts CLOCK_MONOTONIC too, which hangs Python
3.11: a timed ``Lock.acquire``/``Event.wait`` calls ``sem_clockwait(CLOCK_MONOTONIC)``,
which libfaketime does not intercept, with a deadline ~1.7e9 s away. ``--exclude-monotonic``
(FAKETIME_DONT_FAKE_MONOTONIC=1) leaves the monotonic clock alone, which is also what a
machine with a misset wall clock looks like. One wart remains in Debian's libfaketime
0.9.10 (upstream issue #426): ``time.sleep()`` (an absolute ``clock_nanosleep`` on the
monotonic clock) fails with EINVAL. The nodes sleep by ``Event.wait``; only retry paths
that need the database down and a worker's final ``Popen.wait(timeout)`` at shutdown
use ``time.sleep``, and neither is on this test's path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import FAST_TIMINGS, Cluster, log_of, wait_for

from chronosync_dev.devcluster import NodeProcess

TTL_S = float(FAST_TIMINGS["CHRONOSYNC_NODE_TTL_S"])
SKEW = timedelta(minutes=10)
# (kind, clock offset): a coordinator and a worker on each side of the database's clock.
SKEWED_NODES = (
    ("scheduler", -SKEW),
    ("coordinator", +SKEW),
    ("coordinator", -SKEW),
    ("worker", +SKEW),
    ("worker", -SKEW),
)
# More tasks due at one instant than one worker has slots (8), so both workers run some.
BURST = 12
# How far a node's or a command's clock reading may stray from the expected skew (it is
# read a little before or after the instant it is compared with).
CLOCK_SLACK = timedelta(seconds=5)
# Nodes under libfaketime run far slower than without it: starts here come 0.1-0.9 s
# after their due time (1.03 s once on a loaded machine), where the bench measures a p99
# under 10 ms. A clock bug would make them minutes early or late, which this catches.
LATE_BOUND = timedelta(seconds=3)
# A faketime node ignores SIGTERM sent to faketime only (see below); it gets this long.
STOP_S = 20.0

LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) [A-Z]+ ((?:scheduler|coordinator|worker)-\S+) ")


def faketime_wrapper(offset: timedelta) -> list[str]:
    """The command prefix running a node with its wall clock ``offset`` off: the
    thread-safe libfaketime (-m: the nodes are threaded), monotonic clock left alone."""
    seconds = int(offset.total_seconds())
    return ["faketime", "-m", "--exclude-monotonic", "-f", f"{seconds:+d}"]


def _group_gone(node: NodeProcess) -> bool:
    node.proc.poll()  # reap faketime itself, else its zombie keeps the group alive
    try:
        os.killpg(node.pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def skewed_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster fixture, with nodes under faketime stopped as whole process groups.

    ``faketime`` forks: the node is its child, in its process group, and faketime does not
    pass SIGTERM on. ProcessCluster.stop signals only the pid it started (faketime), which
    then exits and leaves the node running; so each group gets the SIGTERM here, before
    the cluster fixture stops (and reports) the rest.
    """
    if shutil.which("faketime") is None:
        pytest.skip("the faketime command is missing: apt-get install faketime")
    yield cluster
    for node in cluster.processes.nodes:
        try:
            os.killpg(node.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_S
    while not all(_group_gone(n) for n in cluster.processes.nodes):
        if time.monotonic() > deadline:
            for node in cluster.processes.nodes:
                if not _group_gone(node):
                    os.killpg(node.pid, signal.SIGKILL)
            break
        time.sleep(0.1)


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def parse(stamp: str | None) -> datetime:
    assert stamp is not None
    return datetime.fromisoformat(stamp)


def first_log_line(node: NodeProcess) -> tuple[datetime, str]:
    """When (by the node's own clock, local time) and as whom the node first logged."""
    def logged() -> tuple[datetime, str] | None:
        for line in log_of(node).splitlines():
            if found := LOG_LINE.match(line):
                stamp = datetime.strptime(found[1], "%Y-%m-%d %H:%M:%S,%f")
                return stamp, found[2]
        return None

    return wait_for(logged, timeout=30, what=f"{node.name} to log")


def test_nodes_with_clocks_10_minutes_off_change_nothing(
    skewed_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = skewed_cluster
    before_start = datetime.now()  # the test's own (true) clock, local time like the logs
    # Readable log lines (not JSON): their time stamps show each node's own clock.
    # Workers pass libfaketime's variables on, so their commands share their clock.
    env = {"CHRONOSYNC_LOG_FORMAT": "text", "CHRONOSYNC_PASS_ENV": "LD_PRELOAD FAKETIME*"}
    nodes = {cluster.processes.start(kind, env=env, wrapper=faketime_wrapper(offset)): offset
             for kind, offset in SKEWED_NODES}
    cluster.wait_ready(coordinators=2, workers=2)
    ready_at = datetime.now()

    # The skew is real: each node stamps its log with its own clock, 10 minutes off.
    skew_of: dict[str, timedelta] = {}
    for node, offset in nodes.items():
        logged_at, node_id = first_log_line(node)
        assert (before_start + offset - CLOCK_SLACK <= logged_at
                <= ready_at + offset + CLOCK_SLACK), (
            f"{node.name} logged at {logged_at} by its clock; expected {offset} off "
            f"the true time, between {before_start} and {ready_at}")
        skew_of[node_id] = offset

    # No false deaths: every node stays alive through several heartbeats and TTLs, and
    # its registry times are the database's.
    poll_until = time.monotonic() + 3 * TTL_S
    polls = 0
    while time.monotonic() < poll_until:
        status, body = cluster.http("GET", "/nodes")
        now = db_now(cluster)
        assert status == 200, body
        listed = {n["id"]: n for n in body["nodes"]}
        assert set(skew_of) <= set(listed), (sorted(skew_of), sorted(listed))
        for node_id in skew_of:
            node = listed[node_id]
            assert node["state"] == "alive", f"falsely judged {node['state']}: {node}"
            beat = parse(node["last_heartbeat_at"])
            assert now - timedelta(seconds=TTL_S) <= beat <= now, (node, now)
            assert now - timedelta(minutes=1) <= parse(node["started_at"]) <= now, (node, now)
        polls += 1
        time.sleep(0.1)
    assert polls >= 5

    # A task without scheduled_at is due "now" by the database clock.
    before = db_now(cluster)
    status, body = cluster.http("POST", "/schedule", {"command": "true"})
    after = db_now(cluster)
    assert status == 201, body
    assert before <= parse(body["scheduled_at"]) <= after, (body["scheduled_at"], before, after)
    assert before <= parse(body["created_at"]) <= after, (body["created_at"], before, after)
    now_task = body["id"]

    # A burst due 2 s ahead (by the database clock): no early start, none late by more than
    # LATE_BOUND, every timestamp the database's, and the command sees its scheduled_at.
    submitted = db_now(cluster)
    due = (submitted + timedelta(seconds=2)).astimezone(UTC).isoformat()
    burst = []
    for _ in range(BURST):
        status, body = cluster.http("POST", "/schedule",
                                    {"command": "env; date -u +%s", "scheduled_at": due})
        assert status == 201, body
        burst.append(body["id"])
    tasks: list[dict[str, Any]] = [cluster.wait_task(i, ("succeeded", "failed"), timeout=30)
                                   for i in [now_task, *burst]]
    finished = db_now(cluster)

    now_run = tasks[0]
    assert now_run["status"] == "succeeded", now_run
    assert parse(now_run["scheduled_at"]) <= parse(now_run["started_at"]) <= finished

    workers_used = set()
    for task in tasks[1:]:
        assert task["status"] == "succeeded", task
        scheduled = parse(task["scheduled_at"])
        assert scheduled == parse(due)
        late = parse(task["started_at"]) - scheduled
        assert timedelta(0) <= late < LATE_BOUND, (
            f"task {task['id']} started {late} after its scheduled_at")
        for name in ("created_at", "picked_at", "started_at", "completed_at"):
            assert submitted <= parse(task[name]) <= finished, (name, task, submitted, finished)
        (attempt,) = task["attempts"]
        for name in ("started_at", "finished_at"):
            assert submitted <= parse(attempt[name]) <= finished, (name, attempt)
        assert parse(task["picked_at"]) >= scheduled
        lines = task["output"].splitlines()
        assert f"CHRONOSYNC_SCHEDULED_AT={task['scheduled_at']}" in lines, task["output"]
        # The command ran under its worker's skewed clock (faketime reaches it too).
        offset = skew_of[task["worker_id"]]
        command_clock = datetime.fromtimestamp(int(lines[-1]), UTC)
        started = parse(task["started_at"])
        assert abs(command_clock - (started + offset)) <= CLOCK_SLACK, (
            f"task {task['id']} on a worker {offset} off read {command_clock}, "
            f"started at {started}")
        workers_used.add(task["worker_id"])
    assert len(workers_used) == 2, f"the burst ran on {workers_used} only"

    # Still no false death, after all that: no node dead, no run lost.
    status, body = cluster.http("GET", "/nodes")
    states = {n["id"]: n["state"] for n in body["nodes"] if n["id"] in skew_of}
    assert states == dict.fromkeys(skew_of, "alive"), states
    lost = cluster.query("SELECT id FROM tasks WHERE error = 'worker_lost'")
    assert not lost, lost
    assert all(node.alive() for node in nodes), [n.name for n in nodes if not n.alive()]
