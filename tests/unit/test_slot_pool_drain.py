"""A stopping worker's slots (``SlotPool.stop``, its drain) over the fake database seam: work
accepted but not started goes back to the queue, a command running is given its grace,
and nothing new is taken."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chronocore import failpoints
from chronocore.repository import ClaimedTask, TaskRepository
from chronocore.testing import FakeQueries
from chronosync_worker.pool import SlotPool

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TTL_S = 5.0


def task(task_id: int, command: str = "true") -> ClaimedTask:
    return ClaimedTask(id=task_id, command=command, token=uuid.uuid4(), timeout_s=None,
                       env={}, scheduled_at=NOW)


def started(**p: Any) -> list[dict[str, Any]]:
    return [{"id": i, "attempt": 1, "lateness_s": 0.0} for i in p["ids"]]


def finished(**p: Any) -> list[dict[str, Any]]:
    return [{"task_id": i} for i in p["ids"]]


def slot_pool(db: FakeQueries, workdir: Path, *, grace_s: float) -> SlotPool:
    pool = SlotPool(repo=TaskRepository(db), worker_id="worker-1", capacity=2,
                    workdir=str(workdir), kill_grace_s=1.0, reaper=None,
                    lease_s=TTL_S / 2, ttl_s=TTL_S, grace_s=grace_s)
    pool.start()
    pool.renewed(time.monotonic())  # a write was answered: the worker takes work
    return pool


def test_a_draining_pool_hands_back_a_task_it_accepted_but_had_not_started(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    at_start, go_on = threading.Event(), threading.Event()

    def pause(name: str, stop: threading.Event | None = None) -> None:
        if name == failpoints.BEFORE_START:
            at_start.set()
            go_on.wait(10)
    monkeypatch.setattr(failpoints, "pause", pause)
    db = FakeQueries({"mark_started": started})
    pool = slot_pool(db, tmp_path, grace_s=10.0)
    accepted = task(1)
    assert pool.offer([accepted]) == ([1], [])
    assert at_start.wait(10)
    version, _ = pool.wait_change(-1, timeout=0)
    drainer = threading.Thread(target=pool.stop)
    drainer.start()
    pool.wait_change(version, timeout=10)  # draining has begun
    go_on.set()
    drainer.join(10)
    assert not drainer.is_alive()
    assert db.called("release_claims") == [{"ids": [1], "tokens": [accepted.token]}]
    assert db.called("mark_started") == []  # never started, so never run here


def test_a_draining_pool_lets_a_running_command_finish_within_its_grace(
        tmp_path: Path) -> None:
    db = FakeQueries({"mark_started": started, "mark_finished": finished})
    pool = slot_pool(db, tmp_path, grace_s=30.0)
    assert pool.offer([task(1, "sleep 0.5")]) == ([1], [])
    deadline = time.monotonic() + 10
    while not db.called("mark_started"):
        assert time.monotonic() < deadline, "the start was never recorded"
        time.sleep(0.01)
    pool.stop()
    [outcome] = db.called("mark_finished")
    assert (outcome["succeeded"], outcome["errors"]) == ([True], [None])


def test_a_drained_pool_takes_no_new_work(tmp_path: Path) -> None:
    pool = slot_pool(FakeQueries(), tmp_path, grace_s=1.0)
    pool.stop()
    assert pool.offer([task(1), task(2)]) == ([], [1, 2])
    assert pool.draining
