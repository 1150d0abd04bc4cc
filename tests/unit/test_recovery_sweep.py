"""The sweeper's order over the fake database seam: unstarted claims first, then targeted
tasks, and judging runs lost only once connected long enough to trust the heartbeats."""

from __future__ import annotations

from chronocore.db import POOL_WAIT_S
from chronocore.repository import TaskRepository
from chronocore.testing import FakeQueries
from chronosync_coordinator.recovery import sweep

TTL_S = 5.0
TRUSTED_S = TTL_S + POOL_WAIT_S


def swept(connected_for: float) -> FakeQueries:
    db = FakeQueries({"recover_lost_runs": [{"task_id": 9, "retry": True}]})
    sweep(TaskRepository(db), ttl_s=TTL_S, connected_for=lambda: connected_for,
          sweeper="coordinator-1", beat_s=1.0)
    return db


def test_a_sweep_requeues_stale_claims_then_sorts_targeted_tasks_then_recovers_runs() -> None:
    db = swept(TRUSTED_S)
    assert [name for name, _ in db.calls] == [
        "requeue_stale_claims", "sort_targeted", "recover_lost_runs"]
    assert db.called("requeue_stale_claims") == [{"lease_s": TTL_S}]
    assert db.called("sort_targeted") == [{"ttl_s": TTL_S, "judge_dead": True}]
    [recover] = db.called("recover_lost_runs")
    # The statement also asks that the sweeper's own beat be fresh: a beat and its slack.
    assert (recover["ttl_s"], recover["sweeper"], recover["fresh_s"]) == (
        TTL_S, "coordinator-1", 2.0)


def test_right_after_an_outage_a_sweep_judges_no_worker_dead() -> None:
    db = swept(TRUSTED_S - 0.1)
    # Fenced claims go back at once, and tasks no worker matches are set aside (undone
    # by the next sweep), but no run is recovered and no pinned task failed.
    assert [name for name, _ in db.calls] == ["requeue_stale_claims", "sort_targeted"]
    assert db.called("sort_targeted") == [{"ttl_s": TTL_S, "judge_dead": False}]


def test_connectivity_is_read_when_judging_not_when_the_sweep_began() -> None:
    readings = iter([TRUSTED_S, 0.0])  # frozen between the two judgements
    db = FakeQueries()
    sweep(TaskRepository(db), ttl_s=TTL_S, connected_for=lambda: next(readings),
          sweeper="coordinator-1", beat_s=1.0)
    assert db.called("recover_lost_runs") == []
