"""A worker cut off from PostgreSQL alone (the rest of the cluster, and the commands' side
effects, untouched) fences itself: it kills its runs before the cluster may give them to
another worker, so an at_least_once attempt never overlaps its retry and an at_most_once
command never outlives its ``worker_lost``.

The cut is a TCP relay (``relay.py``) between that one worker and PostgreSQL; the other
worker, the coordinators and the scheduler connect directly. Each command writes
timestamps (the machine's clock, which is also the database's) to files, so the test
sees when each attempt really ran.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import FAST_TIMINGS, Cluster, log_of, node_id, wait_for
from relay import Relay

from chronocore import db
from chronocore.reaper import processes_of

pytestmark = pytest.mark.slow

TTL = timedelta(seconds=float(FAST_TIMINGS["CHRONOSYNC_NODE_TTL_S"]))
FAST_RETRY = {"CHRONOSYNC_RETRY_BACKOFF_S": "0.2"}


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def submit(cluster: Cluster, command: str, **fields: Any) -> int:
    status, body = cluster.http("POST", "/schedule", {"command": command, **fields})
    assert status == 201, body
    return body["id"]


def attempts(cluster: Cluster, task_id: int) -> list[dict[str, Any]]:
    return cluster.query(
        "SELECT attempt, worker_id, started_at, finished_at, error FROM task_attempts"
        " WHERE task_id = %s ORDER BY attempt", (task_id,))


def row(cluster: Cluster, task_id: int) -> dict[str, Any]:
    return cluster.query(
        "SELECT id, attempt, worker_id, claim_token, started_at, completed_at, failed_at,"
        " error, exit_code FROM tasks WHERE id = %s", (task_id,))[0]


def stamps(path: Path) -> list[float]:
    try:
        return [float(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def alive(task_id: int, attempt: int, worker_id: str) -> list[int]:
    """Pids of processes of this run (found by the identity every run's processes carry)."""
    identity = frozenset({f"CHRONOSYNC_TASK_ID={task_id}".encode(),
                          f"CHRONOSYNC_ATTEMPT={attempt}".encode(),
                          f"CHRONOSYNC_WORKER_ID={worker_id}".encode()})
    return processes_of([identity])


def test_a_worker_cut_off_from_postgres_kills_its_runs_before_the_cluster_takes_them_back(
    cluster: Cluster, dsn: str, tmp_path: Path
) -> None:
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    # Each attempt stamps its start; attempt 1 then stamps every 20 ms until killed, and
    # any later attempt ends at once.
    run = f"{ticks}/$CHRONOSYNC_TASK_ID-$CHRONOSYNC_ATTEMPT"
    command = (f'date +%s.%N > {run}.start; '
               f'if [ "$CHRONOSYNC_ATTEMPT" = 1 ]; then '
               f'while :; do date +%s.%N >> {run}.ticks; sleep 0.02; done; fi')

    with Relay(dsn) as relay:
        cluster.start("scheduler")
        for _ in range(2):
            cluster.start("coordinator", **FAST_RETRY)
        cut_off = cluster.start("worker", CHRONOSYNC_DSN=relay.dsn, **FAST_RETRY)
        cluster.wait_ready(coordinators=2, workers=1)
        cut_off_id = node_id(cluster, cut_off)
        # The coordinators judge others only after being connected a TTL plus the pool's
        # wait: let that pass, so the recovery is the TTL's.
        judging_after = TTL + timedelta(seconds=db.POOL_WAIT_S + 0.5)
        wait_for(lambda: cluster.query(
            "SELECT count(*) FILTER (WHERE started_at < now() - %s) AS n FROM nodes"
            " WHERE kind = 'coordinator'", (judging_after,))[0]["n"] == 2, timeout=30,
            what="the coordinators to have been up long enough to judge others")

        at_least_once = submit(cluster, command, delivery="at_least_once", max_attempts=3)
        at_most_once = submit(cluster, command)
        ids = (at_least_once, at_most_once)
        wait_for(lambda: all(stamps(ticks / f"{i}-1.ticks") for i in ids), timeout=30,
                 what="both commands to run on the relayed worker")
        assert all(row(cluster, i)["worker_id"] == cut_off_id for i in ids)

        # Only now a second worker, for the retry (the first took both tasks alone).
        other = cluster.start("worker", **FAST_RETRY)
        other_id = node_id(cluster, other)
        cluster.wait_ready(coordinators=2, workers=2)

        relay.cut()
        cut_at = db_now(cluster)
        print(f"relay cut at {cut_at.isoformat()}")

        # The retry starts on the other worker; the at_most_once task is failed.
        def retried_and_failed() -> bool:
            return (len(attempts(cluster, at_least_once)) == 2
                    and (ticks / f"{at_least_once}-2.start").exists()
                    and row(cluster, at_most_once)["failed_at"] is not None)

        wait_for(retried_and_failed, timeout=30,
                 what="the at_least_once retry to start and the at_most_once task to fail")
        # At this instant, the attempts taken back must be dead already.
        still_running = {i: alive(i, 1, cut_off_id) for i in ids}
        retry_began = stamps(ticks / f"{at_least_once}-2.start")[0]
        amo = row(cluster, at_most_once)

        alo_attempts = attempts(cluster, at_least_once)
        assert [(a["attempt"], a["worker_id"], a["error"]) for a in alo_attempts[:1]] == [
            (1, cut_off_id, "worker_lost")], alo_attempts
        assert alo_attempts[1]["worker_id"] == other_id, alo_attempts
        first_ran_until = stamps(ticks / f"{at_least_once}-1.ticks")[-1]
        assert first_ran_until < retry_began, (
            f"attempt 1 still ran {first_ran_until - retry_began:.3f}s after attempt 2 began")

        assert amo["error"] == "worker_lost" and amo["completed_at"] is None, amo
        amo_ran_until = stamps(ticks / f"{at_most_once}-1.ticks")[-1]
        assert amo_ran_until < amo["failed_at"].timestamp(), (
            f"the at_most_once command ran {amo_ran_until - amo['failed_at'].timestamp():.3f}s "
            f"past its worker_lost")
        assert [(a["attempt"], a["worker_id"], a["error"])
                for a in attempts(cluster, at_most_once)] == [(1, cut_off_id, "worker_lost")]
        assert not any(still_running.values()), (
            f"commands of the cut-off worker still ran when the cluster had taken them "
            f"back: {still_running}")
        text = log_of(cut_off)
        for task_id in ids:
            assert f"task {task_id}: no answer from the database" in text, text[-3000:]
        print(f"attempt 1 stopped {retry_began - first_ran_until:.3f}s before attempt 2 "
              f"began; the at_most_once command stopped "
              f"{amo['failed_at'].timestamp() - amo_ran_until:.3f}s before its worker_lost")

        # Back on the network, the worker's records of the killed runs are fenced off.
        recovered = {i: row(cluster, i) for i in ids}
        assert cluster.wait_task(at_least_once, ("succeeded", "failed"))["status"] == (
            "succeeded")
        recovered[at_least_once] = row(cluster, at_least_once)
        relay.heal()
        healed_mono = time.monotonic()
        wait_for(lambda: all(f"task {i}: outcome fenced off" in log_of(cut_off) for i in ids),
                 timeout=60, what="the cut-off worker's late records to be fenced off")
        assert {i: row(cluster, i) for i in ids} == recovered
        assert len(attempts(cluster, at_least_once)) == 2
        wait_for(lambda: "taking work" in log_of(cut_off).split("taking no new work")[-1],
                 timeout=30, what="the cut-off worker to take work again")
        print(f"fenced records {time.monotonic() - healed_mono:.1f}s after the heal")
        assert all(node.alive() for node in cluster.processes.nodes)
        for node in cluster.processes.nodes:
            assert "unexpected error" not in log_of(node), node.name


def test_a_run_whose_claim_was_taken_while_its_worker_still_heartbeats_is_stopped(
    cluster: Cluster, tmp_path: Path
) -> None:
    """What the lease cannot see (a sweeper judging by a shorter TTL than the worker's,
    say): the worker's heartbeat finds the claim taken and stops the run."""
    cluster.start_default(coordinators=1, workers=1)
    worker = cluster.processes.nodes[-1]
    worker_id = node_id(cluster, worker)
    ran = tmp_path / "ticks"
    task = submit(cluster, f"while :; do date +%s.%N >> {ran}; sleep 0.05; done")
    wait_for(lambda: stamps(ran), timeout=30, what="the command to run")
    # Another holder's token, with the worker alive and well.
    cluster.query("UPDATE tasks SET claim_token = gen_random_uuid() WHERE id = %s", (task,))
    wait_for(lambda: f"task {task}: outcome fenced off" in log_of(worker), timeout=30,
             what="the worker to stop the run and find its outcome fenced off")
    assert not alive(task, 1, worker_id), "the run outlived its worker's giving it up"
    assert "no answer from the database" not in log_of(worker)
    row_now = row(cluster, task)
    assert row_now["completed_at"] is None and row_now["failed_at"] is None, row_now
