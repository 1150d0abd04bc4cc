"""Calls into a worker's gRPC service from outside the dispatch path (cancel)."""

from __future__ import annotations

import logging

import grpc
import psycopg

from chronocore.registry import NodeRegistry
from chronocore.rpc import worker_pb2, worker_pb2_grpc
from chronocore.tls import TlsFiles, open_channel

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 2.0


def cancel_on_worker(registry: NodeRegistry, worker_id: str, task_id: int, *,
                     tls: TlsFiles | None) -> bool:
    """Ask the worker running a task to terminate it now; True if it was running there.

    Best effort: a worker that cannot be reached finds the cancellation in the database
    at its next heartbeat anyway.
    """
    try:
        address = registry.worker_address(worker_id)
        if not address:
            return False
        with open_channel(address, tls) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            reply = stub.Cancel(worker_pb2.CancelRequest(task_id=task_id),
                                timeout=CANCEL_TIMEOUT_S)
        return reply.signalled
    except (grpc.RpcError, psycopg.Error) as exc:
        log.warning("task %s: could not reach worker %s to cancel: %s", task_id, worker_id,
                    exc)
        return False
