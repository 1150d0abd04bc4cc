"""The dispatch path: offer claimed tasks to live workers, least loaded first.

Each coordinator follows every live worker's slot stream (``WatchSlots``): a freed slot
wakes the claim loop at once, so a busy cluster dispatches as fast as commands end. The
stream's keepalives, saying nothing new, wake nothing.

A worker answers each offer with what it accepted (each accepted task owns one of its
slots) and what it rejected (full or draining); rejected tasks go to the next worker.
What no worker takes goes back to the queue at once (``release``), fenced by its token.

An offer that fails (the worker unreachable, or its answer later than RPC_TIMEOUT_S) may
have been accepted all the same, so its tasks are never offered to another worker under
the same token: they go back to the queue with the rest, and the next claim gives each a
new token. A late start by the first worker is then fenced off, and so is its late record
of a start it could not write (``spawn: database unreachable``), which under the same
token would have overwritten the second worker's live run. The worker is skipped until
its slot stream or the next refresh says otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from chronocore import metrics
from chronocore.labels import matches
from chronocore.registry import NodeRegistry
from chronocore.repository import ClaimedTask
from chronocore.rpc import worker_pb2, worker_pb2_grpc
from chronocore.tls import TlsFiles, open_channel

log = logging.getLogger(__name__)

DISPATCHED = metrics.Counter("chronosync_tasks_dispatched_total", "Tasks a worker accepted.")
DISPATCH_ERRORS = metrics.Counter("chronosync_dispatch_errors_total",
                                  "Dispatch calls that failed (worker unreachable).")

RPC_TIMEOUT_S = 5.0
# While every worker is full, look again at most this often. Watched workers announce
# freed slots at once (WatchSlots); this bounds the wait for the others.
FULL_RECHECK_S = 0.02
# With no live worker known, read the registry this often until one appears.
NO_WORKERS_RECHECK_S = 0.1


@dataclass
class WorkerView:
    id: str
    address: str
    capacity: int
    running: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.running)


class Dispatcher:
    """A service with no thread of its own to start (each slot stream gets one as it is
    watched); ``stop`` ends the streams and closes the channels."""

    def __init__(self, registry: NodeRegistry, *, coordinator_id: str, ttl_s: float,
                 refresh_s: float, tls: TlsFiles | None,
                 on_slots_freed: Callable[[], None] = lambda: None) -> None:
        self._registry = registry
        self._tls = tls
        self._on_slots_freed = on_slots_freed
        self._watches: dict[str, grpc.Future] = {}
        self._coordinator_id = coordinator_id
        self._ttl_s = ttl_s
        self._refresh_s = refresh_s
        self._workers: dict[str, WorkerView] = {}
        self._refreshed_at = float("-inf")
        self._rechecked_at = float("-inf")
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.RLock()  # refresh opens channels while holding it

    def free_slots(self) -> int:
        """Our best estimate of free slots across live workers (refreshing as needed)."""
        now = time.monotonic()
        refresh_s = self._refresh_s if self._workers else NO_WORKERS_RECHECK_S
        if now - self._refreshed_at >= refresh_s:
            self.refresh()
        elif not self._total_free() and now - self._rechecked_at >= FULL_RECHECK_S:
            self._rechecked_at = now
            self._ask_workers()
        return self._total_free()

    def refresh(self) -> None:
        """Read the live workers from the registry (the database decides who is alive);
        watch each one's slots, whose stream is fresher than the heartbeat's figure."""
        workers = {}
        for r in self._registry.live_workers(ttl_s=self._ttl_s):
            if not r.address:
                continue
            known = self._workers.get(r.id)
            if known is not None and r.id in self._watches:
                known.labels = r.labels or {}
                workers[r.id] = known
            else:
                workers[r.id] = WorkerView(r.id, r.address, r.capacity or 0, r.running,
                                           r.labels or {})
        self._workers = workers
        with self._lock:
            for worker_id in [w for w in self._watches if w not in workers]:
                self._watches.pop(worker_id).cancel()
            for worker in workers.values():
                if worker.id not in self._watches:
                    self._watches[worker.id] = self._watch(worker)
        self._refreshed_at = time.monotonic()

    def _watch(self, worker: WorkerView) -> grpc.Future:
        """Follow a worker's slot stream on a thread of its own until it ends."""
        stub = worker_pb2_grpc.WorkerStub(self._channel(worker.address))
        call = stub.WatchSlots(worker_pb2.HealthRequest())

        def follow() -> None:
            try:
                for update in call:
                    free_before = worker.free
                    worker.capacity = update.capacity
                    worker.running = update.capacity if update.draining else update.running
                    if worker.free > free_before:  # a keepalive saying nothing new: no wake
                        self._on_slots_freed()
            except grpc.RpcError:
                pass  # cancelled, or the worker went away: the next refresh decides
            finally:
                with self._lock:
                    if self._watches.get(worker.id) is call:
                        del self._watches[worker.id]

        threading.Thread(target=follow, name=f"watch-{worker.id}", daemon=True).start()
        return call

    def free_workers(self) -> list[dict[str, object]]:
        """Each worker with free slots, its id and labels: the claim takes a targeted
        task only if one of them satisfies its target (or is the worker it is pinned to)."""
        return [{"id": w.id, "labels": w.labels} for w in self._workers.values() if w.free > 0]

    def dispatch(self, tasks: list[ClaimedTask]) -> list[ClaimedTask]:
        """Offer tasks to workers (a targeted task only to a worker with its labels);
        returns those nobody accepted, and those whose offer failed (maybe accepted: to be
        released, never offered again under this token)."""
        pending = {t.id: t for t in tasks}
        uncertain: list[ClaimedTask] = []
        for worker in sorted(self._workers.values(), key=lambda w: -w.free):
            if not pending:
                break
            if worker.free <= 0:
                continue
            offer = [t for t in pending.values() if self._fits(t, worker)][: worker.free]
            if not offer:
                continue
            reply = self._offer(worker, offer)
            if reply is None:
                for task in offer:
                    uncertain.append(pending.pop(task.id))
                continue
            for task_id in reply.accepted:
                pending.pop(task_id, None)
                log.debug("task %s: dispatched to %s", task_id, worker.id,
                          extra={"task_id": task_id})
            DISPATCHED.inc(len(reply.accepted))
        return [*pending.values(), *uncertain]

    @staticmethod
    def _fits(task: ClaimedTask, worker: WorkerView) -> bool:
        if task.pinned_worker is not None and task.pinned_worker != worker.id:
            return False
        return task.target is None or matches(worker.labels, task.target)

    def start(self) -> None:
        """Nothing to do: workers are watched as the claim loop first asks for them."""

    def stop(self) -> None:
        with self._lock:
            for call in self._watches.values():
                call.cancel()
            self._watches.clear()
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def _offer(self, worker: WorkerView,
               tasks: list[ClaimedTask]) -> worker_pb2.DispatchReply | None:
        stub = worker_pb2_grpc.WorkerStub(self._channel(worker.address))
        request = worker_pb2.DispatchRequest(
            coordinator_id=self._coordinator_id, tasks=[t.to_message() for t in tasks]
        )
        try:
            reply = stub.Dispatch(request, timeout=RPC_TIMEOUT_S)
        except grpc.RpcError as exc:
            log.warning("worker %s unreachable (%s); skipping it until the next refresh",
                        worker.id, exc.code())
            DISPATCH_ERRORS.inc()
            worker.running = worker.capacity
            return None
        worker.capacity = reply.capacity
        worker.running = reply.capacity if reply.draining else reply.running
        if reply.rejected:
            log.debug("worker %s rejected %d tasks", worker.id, len(reply.rejected))
        return reply

    def _ask_workers(self) -> None:
        """The fallback for workers whose slot stream is not (yet) open."""
        for worker in self._workers.values():
            if worker.id in self._watches:
                continue
            stub = worker_pb2_grpc.WorkerStub(self._channel(worker.address))
            try:
                health = stub.Health(worker_pb2.HealthRequest(), timeout=RPC_TIMEOUT_S)
            except grpc.RpcError:
                continue
            worker.capacity = health.capacity
            worker.running = health.capacity if health.draining else health.running

    def _total_free(self) -> int:
        return sum(w.free for w in self._workers.values())

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = open_channel(address, self._tls)
            return channel
