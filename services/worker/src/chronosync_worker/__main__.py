"""``chronosync-worker``: register, heartbeat, serve Dispatch/Cancel/Health, run commands.

Stops on SIGTERM/SIGINT: takes no new work, lets running commands finish within
CHRONOSYNC_SHUTDOWN_GRACE_S, cancels the rest, then leaves the registry.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from concurrent import futures

import grpc
import psycopg

from chronocore import db
from chronocore.config import Config, ConfigError, split_host_port
from chronocore.node import migrate_when_reachable, setup_logging, stop_event_on_signals
from chronocore.reaper import Reaper
from chronocore.registry import Heartbeat, NodeRegistry, new_node_id
from chronocore.repository import Backoff, TaskRepository
from chronocore.rpc import worker_pb2_grpc
from chronosync_worker.pool import SlotPool
from chronosync_worker.server import WorkerServicer

log = logging.getLogger("chronosync.worker")

RPC_THREADS = 8


def advertised_address(bound_host: str, port: int, override: str | None) -> str:
    if override:
        return override
    if bound_host in ("0.0.0.0", "::", ""):
        return f"{socket.gethostname()}:{port}"
    return f"{bound_host}:{port}"


def main() -> int:
    node_id = new_node_id("worker")
    setup_logging(node_id)
    try:
        config = Config.from_env()
        host, _ = split_host_port(config.worker_addr, name="CHRONOSYNC_WORKER_ADDR")
        grace_s = float(os.environ.get("CHRONOSYNC_SHUTDOWN_GRACE_S", "30"))
    except (ConfigError, ValueError) as exc:
        log.error("bad configuration: %s", exc)
        return 2
    stop = stop_event_on_signals()
    if not migrate_when_reachable(config.dsn, stop):
        return 0
    pool = db.open_pool(config.dsn, size=config.pool_size + config.worker_capacity,
                        name="worker")
    repo = TaskRepository(pool, backoff=Backoff(base_s=config.retry_backoff_s,
                                                max_s=config.retry_backoff_max_s))
    workdir = config.workdir or tempfile.mkdtemp(prefix="chronosync-worker-")
    reaper = Reaper()
    slots = SlotPool(repo=repo, worker_id=node_id, capacity=config.worker_capacity,
                     workdir=workdir, kill_grace_s=config.kill_grace_s, reaper=reaper)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=RPC_THREADS))
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(slots, worker_id=node_id),
                                                 server)
    port = server.add_insecure_port(config.worker_addr)
    server.start()
    address = advertised_address(host, port, config.worker_advertise_addr)

    registry = NodeRegistry(pool, node_id=node_id, kind="worker", address=address,
                            capacity=config.worker_capacity)

    # Each beat also stops runs cancelled (should a Cancel RPC have been lost) or taken
    # from us while we were paused or cut off.
    heartbeat = Heartbeat(registry, interval_s=config.heartbeat_s,
                          running=lambda: slots.running, on_beat=slots.stop_revoked)
    try:
        registry.register()
    except psycopg.OperationalError as exc:
        log.warning("could not register yet (%s); the heartbeat will", exc)
    heartbeat.start()
    log.info("worker listening on %s (capacity %d, workdir %s)", address,
             config.worker_capacity, workdir)

    stop.wait()
    log.info("draining: waiting up to %.0fs for %d running commands", grace_s, slots.running)
    try:
        registry.mark_draining()
    except Exception as exc:  # the database may be down: dispatchers learn it by RPC too
        log.warning("could not mark draining: %s", exc)
    slots.drain(grace_s=grace_s)
    reaper.close()
    server.stop(grace=1).wait()
    heartbeat.stop()
    try:
        registry.mark_stopped()
    except Exception as exc:
        log.warning("could not mark stopped: %s", exc)
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
