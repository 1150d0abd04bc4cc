"""The dispatcher's offers over the fake database seam (live workers from the registry)
and scripted worker replies in place of the gRPC calls."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from chronocore.registry import NodeRegistry
from chronocore.repository import ClaimedTask
from chronocore.rpc import worker_pb2
from chronocore.testing import FakeQueries
from chronosync_coordinator.dispatch import Dispatcher, WorkerView

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def task(task_id: int, *, target: dict[str, str] | None = None,
         pinned: str | None = None) -> ClaimedTask:
    return ClaimedTask(id=task_id, command="true", token=uuid.uuid4(), timeout_s=None,
                       env={}, scheduled_at=NOW, target=target, pinned_worker=pinned)


def worker(worker_id: str, *, capacity: int, running: int = 0,
           labels: dict[str, str] | None = None, address: str | None = "127.0.0.1:1"
           ) -> dict[str, Any]:
    return {"id": worker_id, "address": address, "capacity": capacity, "running": running,
            "labels": labels}


class ScriptedDispatcher(Dispatcher):
    """Each worker takes up to ``takes[id]`` of what it is offered (unreachable: absent);
    no slot stream is opened."""

    def __init__(self, workers: list[dict[str, Any]], takes: dict[str, int]) -> None:
        super().__init__(NodeRegistry(FakeQueries({"live_workers": workers}),
                                      node_id="coordinator-1", kind="coordinator"),
                         coordinator_id="coordinator-1", ttl_s=5.0, refresh_s=60.0,
                         tls=None)
        self.takes = takes
        self.offers: list[tuple[str, list[int]]] = []
        self.refresh()

    def _watch(self, worker: WorkerView) -> Any:
        return _NoStream()

    def _offer(self, worker: WorkerView,
               tasks: list[ClaimedTask]) -> worker_pb2.DispatchReply | None:
        self.offers.append((worker.id, [t.id for t in tasks]))
        if worker.id not in self.takes:
            worker.running = worker.capacity  # as a failed call does: skipped from now on
            return None
        accepted = [t.id for t in tasks][: self.takes[worker.id]]
        worker.running += len(accepted)
        return worker_pb2.DispatchReply(
            accepted=accepted, rejected=[t.id for t in tasks if t.id not in accepted],
            capacity=worker.capacity, running=worker.running)


class _NoStream:
    def cancel(self) -> None:
        pass


def test_workers_without_an_address_are_not_offered_anything() -> None:
    dispatcher = ScriptedDispatcher([worker("a", capacity=2, address=None),
                                     worker("b", capacity=2)], takes={"a": 2, "b": 2})
    assert dispatcher.free_workers() == [{"id": "b", "labels": {}}]
    assert dispatcher.free_slots() == 2


def ids(tasks: list[ClaimedTask]) -> list[int]:
    return [t.id for t in tasks]


def test_the_least_loaded_worker_is_offered_first_and_no_more_than_its_free_slots() -> None:
    dispatcher = ScriptedDispatcher([worker("busy", capacity=4, running=3),
                                     worker("idle", capacity=4, running=1)],
                                    takes={"busy": 4, "idle": 4})
    left = dispatcher.dispatch([task(1), task(2), task(3), task(4), task(5)])
    assert dispatcher.offers == [("idle", [1, 2, 3]), ("busy", [4])]
    assert ids(left) == [5]


def test_what_a_worker_rejects_is_offered_to_the_next_and_the_rest_handed_back() -> None:
    dispatcher = ScriptedDispatcher([worker("a", capacity=3), worker("b", capacity=2)],
                                    takes={"a": 1, "b": 1})
    left = dispatcher.dispatch([task(1), task(2), task(3)])
    assert dispatcher.offers == [("a", [1, 2, 3]), ("b", [2, 3])]
    assert ids(left) == [3]


def test_a_failed_offer_s_tasks_are_handed_back_never_offered_to_another_worker() -> None:
    dispatcher = ScriptedDispatcher([worker("gone", capacity=3), worker("b", capacity=2)],
                                    takes={"b": 2})
    left = dispatcher.dispatch([task(1), task(2)])
    # The first worker may have accepted them: offered again under the same token, they
    # could run twice. They go back to the queue, to be claimed under new tokens.
    assert dispatcher.offers == [("gone", [1, 2])]
    assert ids(left) == [1, 2]
    assert dispatcher.free_slots() == 2  # the unreachable worker counts as full


def test_a_targeted_task_is_offered_only_to_a_worker_with_its_labels() -> None:
    dispatcher = ScriptedDispatcher(
        [worker("plain", capacity=5), worker("gpu", capacity=1, labels={"gpu": "yes"})],
        takes={"plain": 5, "gpu": 1})
    left = dispatcher.dispatch([task(1, target={"gpu": "yes"}), task(2, target={"gpu": "yes"}),
                                task(3)])
    assert dispatcher.offers == [("plain", [3]), ("gpu", [1])]
    assert ids(left) == [2]


def test_a_broadcast_s_task_is_offered_only_to_the_worker_it_is_pinned_to() -> None:
    dispatcher = ScriptedDispatcher([worker("a", capacity=2), worker("b", capacity=1)],
                                    takes={"a": 2, "b": 1})
    left = dispatcher.dispatch([task(1, pinned="b"), task(2, pinned="c")])
    assert dispatcher.offers == [("b", [1])]
    assert ids(left) == [2]
