"""The claim loop's step (``ClaimLoop.run_once``) over the fake database seam: how much
it claims, what it hands back, and how long it sleeps."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from chronocore.repository import ClaimedTask, TaskRepository
from chronocore.testing import FakeQueries
from chronosync_coordinator.claim import DUE_SLACK_S, ClaimLoop
from chronosync_coordinator.dispatch import FULL_RECHECK_S

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MAX_IDLE_S = 5.0


def claimed_row(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "command": f"echo {task_id}", "claim_token": uuid.uuid4(),
            "timeout_s": None, "env": {}, "scheduled_at": NOW, "target": None,
            "pinned_worker": None}


class Workers:
    """The dispatcher's side: ``free`` slots; accepts the tasks whose ids are in
    ``accepts`` (all if None) and returns the rest."""

    def __init__(self, free: int, accepts: set[int] | None = None) -> None:
        self.free = free
        self.accepts = accepts
        self.offered: list[ClaimedTask] = []

    def free_slots(self) -> int:
        return self.free

    def free_workers(self) -> list[dict[str, object]]:
        return [{"id": "worker-1", "labels": {}}] if self.free else []

    def dispatch(self, tasks: list[ClaimedTask]) -> list[ClaimedTask]:
        self.offered += tasks
        return [t for t in tasks if self.accepts is not None and t.id not in self.accepts]


def loop(db: FakeQueries, workers: Workers, *, batch: int = 100) -> ClaimLoop:
    return ClaimLoop(repo=TaskRepository(db), dispatcher=workers,  # type: ignore[arg-type]
                     coordinator_id="coordinator-1", dsn="", batch=batch,
                     max_idle_s=MAX_IDLE_S)


def test_a_step_claims_no_more_than_the_free_slots_nor_the_batch() -> None:
    db = FakeQueries()
    loop(db, Workers(free=3), batch=10).run_once()
    loop(db, Workers(free=50), batch=10).run_once()
    assert [c["limit"] for c in db.called("claim_due")] == [3, 10]


def test_with_every_worker_full_a_step_claims_nothing_and_looks_again_soon() -> None:
    db = FakeQueries()
    assert loop(db, Workers(free=0)).run_once() == FULL_RECHECK_S
    assert db.calls == []


def test_claimed_tasks_go_to_the_workers_and_the_next_step_follows_at_once() -> None:
    rows = [claimed_row(1), claimed_row(2)]
    db = FakeQueries({"claim_due": rows})
    workers = Workers(free=2)
    assert loop(db, workers).run_once() == 0.0
    assert [t.id for t in workers.offered] == [1, 2]
    assert [t.token for t in workers.offered] == [r["claim_token"] for r in rows]
    assert db.called("release_claims") == []


def test_tasks_no_worker_took_are_handed_back_under_their_tokens_in_id_order() -> None:
    rows = [claimed_row(3), claimed_row(1), claimed_row(2)]
    db = FakeQueries({"claim_due": rows})
    assert loop(db, Workers(free=3, accepts={1})).run_once() == FULL_RECHECK_S
    [released] = db.called("release_claims")
    assert released["ids"] == [2, 3]
    assert released["tokens"] == [rows[2]["claim_token"], rows[0]["claim_token"]]


def test_a_stopping_loop_hands_its_fresh_claims_back_instead_of_dispatching() -> None:
    db = FakeQueries({"claim_due": [claimed_row(1)]})
    workers = Workers(free=1)
    claim_loop = loop(db, workers)
    claim_loop.stop()
    assert claim_loop.run_once() == 0.0
    assert workers.offered == []
    assert db.called("release_claims")[0]["ids"] == [1]


@pytest.mark.parametrize(("next_due", "sleep"), [
    (None, MAX_IDLE_S),  # nothing waits: only a notification or the bound wakes it
    (1.5, 1.5 + DUE_SLACK_S),  # until just after the next task is due
    (60.0, MAX_IDLE_S),  # never longer than the bound on a lost notification
    (-2.0, 0.0),  # overdue (held back by the claim's predicate): no negative sleep
])
def test_with_nothing_claimed_a_step_sleeps_until_the_next_due_task(
        next_due: float | None, sleep: float) -> None:
    db = FakeQueries({"next_due_in": [] if next_due is None else [{"seconds": next_due}]})
    assert loop(db, Workers(free=2)).run_once() == pytest.approx(sleep)
    # Judged with the same free workers the claim used.
    assert db.called("next_due_in")[0]["free_workers"].obj == [
        {"id": "worker-1", "labels": {}}]
