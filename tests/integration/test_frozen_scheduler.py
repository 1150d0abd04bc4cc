"""A scheduler frozen in the middle of a materialization step (SIGSTOP, or a host that
vanished without closing its connections) holds nothing the others need: they go on
making every tick of a per-second job, and an edit of that job answers at once."""

from __future__ import annotations

import signal
from datetime import timedelta
from itertools import pairwise

from harness import Cluster, bounded_request, free_port, log_of, wait_for

from chronocore.failpoints import MID_MATERIALIZE

SECOND = timedelta(seconds=1)
# Ticks the healthy scheduler must make past the moment of the freeze: more than the
# horizon (5 s), so they are ticks it made after the freeze, not before.
TICKS_AFTER_FREEZE = 8


def ticks(cluster: Cluster, job_id: int) -> list[dict]:
    return cluster.query("SELECT scheduled_at, command FROM tasks WHERE job_id = %s"
                         " ORDER BY scheduled_at", (job_id,))


def test_a_scheduler_frozen_mid_step_stops_no_tick_and_no_edit(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: bounded_request(cluster.url, "GET", "/readyz", timeout=2).status == 200,
             timeout=30, what="the healthy scheduler to be ready")
    status, job = cluster.http("POST", "/schedule", {"command": "echo tick",
                                                     "cron": "* * * * * *"})
    assert status == 201, job
    # Steady state: the healthy scheduler makes the ticks ahead of their time.
    wait_for(lambda: cluster.query(
        "SELECT 1 FROM tasks WHERE job_id = %s AND scheduled_at > now() + interval '2 s'",
        (job["id"],)), timeout=30, what="ticks made ahead")

    # A second scheduler pauses inside the first step in which it takes the job, and is
    # frozen there.
    frozen = cluster.start("scheduler", CHRONOSYNC_HTTP_ADDR=f"127.0.0.1:{free_port()}",
                           **{MID_MATERIALIZE: "600"})
    try:
        wait_for(lambda: f"failpoint {MID_MATERIALIZE}" in log_of(frozen), timeout=60,
                 what="the second scheduler to pause inside a step that took the job")
        frozen.signal(signal.SIGSTOP)
        frozen_at = cluster.query("SELECT now() AS now")[0]["now"]
        wait_for(lambda: ticks(cluster, job["id"])[-1]["scheduled_at"]
                 >= frozen_at + TICKS_AFTER_FREEZE * SECOND, timeout=30,
                 what=f"ticks up to {TICKS_AFTER_FREEZE} s after the freeze")

        edit = bounded_request(cluster.url, "PATCH", f"/jobs/{job['id']}",
                               {"command": "echo edited"}, timeout=5)
        assert edit.status == 200, f"the edit was not answered: {edit}"
        edited_at = cluster.query("SELECT now() AS now")[0]["now"]
        wait_for(lambda: ticks(cluster, job["id"])[-1]["scheduled_at"]
                 >= edited_at + TICKS_AFTER_FREEZE * SECOND, timeout=30,
                 what=f"ticks up to {TICKS_AFTER_FREEZE} s after the edit")
    finally:
        frozen.signal(signal.SIGCONT)

    made = ticks(cluster, job["id"])
    times = [t["scheduled_at"] for t in made]
    gaps = [(a, b) for a, b in pairwise(times) if b - a != SECOND]
    assert not gaps, f"ticks missing (or doubled) around the freeze: {gaps[:5]}"
    # The edit applies from the first tick not yet made when it was answered (made ticks
    # reach at most one horizon, 5 s, ahead).
    later = [t["command"] for t in made if t["scheduled_at"] > edited_at + 6 * SECOND]
    assert later and set(later) == {"echo edited"}, later

