"""The dispatch path under a slow worker, and at rest.

A Dispatch call that times out although the worker accepted must not hand the same
(id, token) to another worker: the first worker, failing to record its start, would
record ``spawn: database unreachable`` under that token over the second worker's live
run.
"""

from __future__ import annotations

import signal
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
