"""The dispatch path under a slow worker, and at rest.

A Dispatch call that times out although the worker accepted must not hand the same
(id, token) to another worker: the first worker, failing to record its start, would
record ``spawn: database unreachable`` under that token over the second worker's live
run. And a cluster at rest must not keep its claim loops busy: the workers' slot
streams speak every second, but only a freed slot wakes a coordinator.
"""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, log_of, node_id, wait_for
from relay import Relay

from chronocore import failpoints

pytestmark = pytest.mark.slow

# Longer than the coordinators' Dispatch deadline (dispatch.RPC_TIMEOUT_S, 5 s), so a
# stale claim is not requeued (TTL after its claim) before the deadline passes.
SLOW_TTL = {"CHRONOSYNC_NODE_TTL_S": "8"}
# The slow worker answers a Dispatch after the coordinator's deadline, and records the
# starts after that: by then the other worker has started what it was offered.
DISPATCH_REPLY_S = "7"
BEFORE_START_S = "10"


def rows(cluster: Cluster, ids: list[int]) -> dict[int, dict[str, Any]]:
    return {r["id"]: r for r in cluster.query(
        "SELECT id, worker_id, claim_token, started_at, completed_at, failed_at, error"
        " FROM tasks WHERE id = ANY(%s)", (ids,))}


def test_a_timed_out_dispatch_never_lets_the_loser_s_failed_start_overwrite_the_winner(
    cluster: Cluster, dsn: str, tmp_path: Path
) -> None:
    ran, go = tmp_path / "ran", tmp_path / "go"
    command = (f'echo "$CHRONOSYNC_TASK_ID $CHRONOSYNC_WORKER_ID" >> {ran}; '
               f"while [ ! -e {go} ]; do sleep 0.05; done")
    with Relay(dsn) as relay:
        cluster.start("scheduler", **SLOW_TTL)
        cluster.start("coordinator", **SLOW_TTL)
        # The slow worker has the most free slots, so it is offered the tasks first; its
        # database connection goes through the relay, to fail its starts on cue.
        slow = cluster.start("worker", CHRONOSYNC_DSN=relay.dsn,
                             CHRONOSYNC_WORKER_CAPACITY="3", **SLOW_TTL,
                             **{failpoints.DISPATCH_REPLY: DISPATCH_REPLY_S,
                                failpoints.BEFORE_START: BEFORE_START_S})
        other = cluster.start("worker", CHRONOSYNC_WORKER_CAPACITY="2", **SLOW_TTL)
        cluster.wait_ready(coordinators=1, workers=2)
        slow_id, other_id = node_id(cluster, slow), node_id(cluster, other)

        # Three tasks due at one instant, so one claim takes them and offers them all to
        # the slow worker, which accepts them and answers too late.
        due = cluster.query("SELECT now() + interval '2 seconds' AS at")[0]["at"]
        ids = []
        for _ in range(3):
            status, body = cluster.http("POST", "/schedule", {
                "command": command, "scheduled_at": due.isoformat()})
            assert status == 201, body
            ids.append(body["id"])

        def on_other() -> list[int]:
            now = rows(cluster, ids)
            return [i for i, r in now.items()
                    if r["worker_id"] == other_id and r["started_at"] is not None]

        winners = wait_for(lambda: len(on_other()) == 2 and on_other(), timeout=30,
                           what="the other worker to start two of the tasks")
        assert f"{failpoints.DISPATCH_REPLY}: pausing" in log_of(slow), (
            "the slow worker was never offered the tasks")
        # The slow worker now fails to record its starts (its database connections are
        # reset), and records each as a failed spawn once the database answers again.
        relay.cut(reset=True)
        wait_for(lambda: all(f"task {i}: could not record its start" in log_of(slow)
                             for i in ids), timeout=30,
                 what="the slow worker to fail to record its starts")
        relay.heal()

        def loser_done() -> bool:
            text = log_of(slow)
            now = rows(cluster, ids)
            return all(f"task {i}: outcome fenced off" in text
                       or now[i]["error"] == "spawn: database unreachable" for i in ids)

        wait_for(loser_done, timeout=30,
                 what="the slow worker's records of its failed starts to land or be fenced")
        after = rows(cluster, ids)
        for task_id in winners:
            assert after[task_id]["error"] is None, (
                f"the slow worker's failed start overwrote task {task_id}, running on "
                f"{other_id}: {after[task_id]}")
            assert after[task_id]["worker_id"] == other_id, after[task_id]
            assert after[task_id]["failed_at"] is None, after[task_id]
        slow.signal(signal.SIGTERM)

        go.touch()
        for task_id in ids:
            task = cluster.wait_task(task_id, ("succeeded", "failed"), timeout=60)
            assert task["status"] == "succeeded", task
        for task_id in winners:
            assert cluster.task(task_id)["worker_id"] == other_id
        started = [line.split() for line in ran.read_text().splitlines()]
        assert sorted(int(t) for t, _ in started) == sorted(ids), started
        assert all(w != slow_id for _, w in started), started


def claim_statements(cluster: Cluster, coordinator_id: str) -> tuple[float, Any]:
    """The coordinator's count of claim statements, as of its latest heartbeat."""
    row = cluster.query("SELECT metrics, last_heartbeat_at FROM nodes WHERE id = %s",
                        (coordinator_id,))[0]
    family = (row["metrics"] or {}).get("chronosync_claim_statements_total")
    count = family["samples"][0][1] if family and family["samples"] else 0.0
    return count, row["last_heartbeat_at"]


# With nothing due, the claim loop looks again only this often (or when woken).
IDLE_S = 30.0
WORKERS = 4
WINDOW = timedelta(seconds=6)


def test_an_idle_coordinator_is_not_woken_by_its_workers_slot_keepalives(
    cluster: Cluster
) -> None:
    cluster.start("scheduler")
    coordinator = cluster.start("coordinator", CHRONOSYNC_MAX_IDLE_S=str(IDLE_S))
    for _ in range(WORKERS):
        cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=WORKERS)
    coordinator_id = node_id(cluster, coordinator)
    # Every worker known (and its slot stream followed) before counting.
    status, body = cluster.http("POST", "/schedule", {"command": "true"})
    assert status == 201, body
    assert cluster.wait_task(body["id"], ("succeeded", "failed"))["status"] == "succeeded"

    first, first_at = wait_for(lambda: claim_statements(cluster, coordinator_id)[0] > 0
                               and claim_statements(cluster, coordinator_id),
                               timeout=30, what="the coordinator to report its claims")

    def a_window_later() -> tuple[float, Any] | None:
        count, at = claim_statements(cluster, coordinator_id)
        return (count, at) if at - first_at >= WINDOW else None

    last, last_at = wait_for(a_window_later, timeout=60,
                             what="the coordinator's heartbeat a window later")
    seconds = (last_at - first_at).total_seconds()
    # At rest, a claim every IDLE_S (and a few for the task's own end); a wake per
    # keepalive would be WORKERS a second.
    bound = 3 + seconds / IDLE_S
    assert last - first <= bound, (
        f"{last - first:.0f} claim statements in {seconds:.1f}s at rest "
        f"(at most {bound:.1f} expected; {WORKERS} workers' keepalives would make "
        f"{WORKERS * seconds:.0f})")
