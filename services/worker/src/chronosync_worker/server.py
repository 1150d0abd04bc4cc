"""The worker's gRPC servicer, a thin adapter from the Worker service to ``SlotPool``,
and the server it runs in."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc

from chronocore import failpoints
from chronocore.node import Hooks
from chronocore.repository import ClaimedTask
from chronocore.rpc import worker_pb2, worker_pb2_grpc
from chronocore.tls import TlsFiles
from chronosync_worker.pool import SlotPool

# A watched worker speaks at least this often, so a dead stream is noticed.
WATCH_KEEPALIVE_S = 1.0
# Dispatch and cancel calls, plus one long-lived slot watch per coordinator.
RPC_THREADS = 64
# A stopping server lets calls in flight finish this long (slot watches never do).
STOP_GRACE_S = 1.0


class WorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, pool: SlotPool, *, worker_id: str) -> None:
        self._pool = pool
        self._worker_id = worker_id

    def Dispatch(self, request: worker_pb2.DispatchRequest,
                 context: grpc.ServicerContext) -> worker_pb2.DispatchReply:
        try:
            tasks = [ClaimedTask.from_message(t) for t in request.tasks]
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed task: {exc}")
        accepted, rejected = self._pool.offer(tasks)
        failpoints.pause(failpoints.DISPATCH_REPLY)
        return worker_pb2.DispatchReply(
            accepted=accepted, rejected=rejected, capacity=self._pool.capacity,
            running=self._pool.running, draining=self._pool.draining,
        )

    def Cancel(self, request: worker_pb2.CancelRequest,
               context: grpc.ServicerContext) -> worker_pb2.CancelReply:
        return worker_pb2.CancelReply(signalled=self._pool.stop_task(request.task_id))

    def Health(self, request: worker_pb2.HealthRequest,
               context: grpc.ServicerContext) -> worker_pb2.HealthReply:
        return self._health(self._pool.running)

    def WatchSlots(self, request: worker_pb2.HealthRequest,
                   context: grpc.ServicerContext) -> Iterator[worker_pb2.HealthReply]:
        version, running = self._pool.wait_change(-1, timeout=0)
        while context.is_active():
            yield self._health(running)
            version, running = self._pool.wait_change(version, timeout=WATCH_KEEPALIVE_S)

    def _health(self, running: int) -> worker_pb2.HealthReply:
        return worker_pb2.HealthReply(
            worker_id=self._worker_id, capacity=self._pool.capacity,
            running=running, draining=self._pool.draining,
        )


class RpcServer(Hooks):
    """The worker's gRPC server, as a service. It binds once made (``port`` is then
    known, for the registry's address); ``start`` serves, ``stop`` ends the calls in
    flight after ``STOP_GRACE_S``."""

    def __init__(self, servicer: WorkerServicer, *, addr: str, tls: TlsFiles | None) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=RPC_THREADS))
        worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
        if tls is None:
            self.port = server.add_insecure_port(addr)
        else:
            self.port = server.add_secure_port(addr, tls.server_credentials())
        super().__init__(on_start=server.start,
                         on_stop=lambda: server.stop(grace=STOP_GRACE_S).wait())
