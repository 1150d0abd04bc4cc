"""Calls into a worker's gRPC service from outside the dispatch path (cancel)."""

from __future__ import annotations

import grpc

from chronocore.rpc import worker_pb2, worker_pb2_grpc

CANCEL_TIMEOUT_S = 2.0


def cancel_on_worker(address: str, task_id: int) -> bool:
    """Ask the worker at ``address`` to terminate the task; True if it was running there.

    Best effort: a worker that cannot be reached also finds the cancellation in the
    database at its next heartbeat.
    """
    with grpc.insecure_channel(address) as channel:
        stub = worker_pb2_grpc.WorkerStub(channel)
        reply = stub.Cancel(worker_pb2.CancelRequest(task_id=task_id),
                            timeout=CANCEL_TIMEOUT_S)
    return reply.signalled
