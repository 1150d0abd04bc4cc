"""``chronosync-worker``: register, heartbeat, serve Dispatch/Cancel/Health, run commands.

Stops on SIGTERM/SIGINT: takes no new work, lets running commands finish within
CHRONOSYNC_SHUTDOWN_GRACE_S, cancels the rest, then leaves the registry.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from concurrent import futures

import grpc

from chronocore import db
from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.node import migrate_when_reachable, setup_logging, stop_event_on_signals
from chronocore.reaper import Reaper
from chronocore.registry import Heartbeat, NodeRegistry, new_node_id
from chronocore.repository import Backoff, TaskRepository
from chronocore.rpc import worker_pb2_grpc
from chronocore.runner import RunAs, Sandbox
from chronocore.tls import TlsFiles
from chronosync_worker.pool import SlotPool
from chronosync_worker.server import WorkerServicer

log = logging.getLogger("chronosync.worker")

# Dispatch and cancel calls, plus one long-lived slot watch per coordinator.
RPC_THREADS = 64


def advertised_address(bound_host: str, port: int, override: str | None) -> str:
    if override:
        return override
    if bound_host in ("0.0.0.0", "::", ""):
        return f"{socket.gethostname()}:{port}"
    return f"{bound_host}:{port}"


def command_user(config: Config) -> RunAs | None:
    """Who runs the commands: never root unless CHRONOSYNC_ALLOW_ROOT=1 says so."""
    if config.run_as is not None:
        if os.geteuid() != 0:
            raise ConfigError("CHRONOSYNC_RUN_AS needs the worker to start as root")
        try:
            run_as = RunAs.lookup(config.run_as)
        except KeyError:
            raise ConfigError(f"CHRONOSYNC_RUN_AS: no user {config.run_as!r}") from None
        except FileNotFoundError as exc:
            raise ConfigError(f"CHRONOSYNC_RUN_AS: {exc}") from None
        if run_as.uid == 0 and not config.allow_root:
            raise ConfigError("CHRONOSYNC_RUN_AS names root; set CHRONOSYNC_ALLOW_ROOT=1 "
                              "if you really mean it")
        return run_as
    if os.geteuid() == 0 and not config.allow_root:
        raise ConfigError("the worker runs as root and would run every command as root: "
                          "set CHRONOSYNC_RUN_AS to an unprivileged user (or "
                          "CHRONOSYNC_ALLOW_ROOT=1 if you really mean it)")
    return None


def command_sandbox(config: Config) -> Sandbox | None:
    """The namespaces each command runs in (CHRONOSYNC_SANDBOX=1), tried once here so a
    kernel or container that refuses them stops the worker at start, saying why."""
    if not config.sandbox:
        return None
    if os.geteuid() == 0:
        raise ConfigError("CHRONOSYNC_SANDBOX is for a worker that is not root; a root "
                          "worker runs commands as CHRONOSYNC_RUN_AS")
    try:
        sandbox = Sandbox.lookup(config.sandbox_hide)
        sandbox.check()
    except OSError as exc:
        raise ConfigError(f"CHRONOSYNC_SANDBOX: {exc}") from None
    return sandbox


def main() -> int:
    node_id = new_node_id("worker")
    setup_logging(node_id)
    try:
        config = Config.from_env()
        host, _ = split_host_port(config.worker_addr, name="CHRONOSYNC_WORKER_ADDR")
        tls = TlsFiles.from_config(config)
        if tls is None and not is_loopback(host) and not config.insecure:
            raise ConfigError(
                f"CHRONOSYNC_WORKER_ADDR {config.worker_addr} is beyond loopback: configure "
                "mutual TLS (CHRONOSYNC_TLS_CA/CERT/KEY) so only the cluster can dispatch "
                "commands here, or set CHRONOSYNC_INSECURE=1")
        run_as = command_user(config)
        sandbox = command_sandbox(config)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    stop = stop_event_on_signals()
    if not migrate_when_reachable(config, stop):
        return 0
    # Slots record starts and outcomes through two group-commit writers, one connection
    # each; the rest is heartbeats, revocation checks and hand-backs.
    pool = db.open_pool(config.dsn, size=config.pool_size + 2, name="worker",
                        pooled=config.pooled, timeouts=config.session_timeouts)
    repo = TaskRepository(pool, backoff=Backoff(base_s=config.retry_backoff_s,
                                                max_s=config.retry_backoff_max_s))
    workdir = config.workdir or tempfile.mkdtemp(prefix="chronosync-worker-")
    if run_as is not None and not config.workdir:
        os.chown(workdir, run_as.uid, run_as.gid)
    reaper = Reaper()
    slots = SlotPool(repo=repo, worker_id=node_id, capacity=config.worker_capacity,
                     workdir=workdir, kill_grace_s=config.kill_grace_s, reaper=reaper,
                     lease_s=config.node_ttl_s / 2, ttl_s=config.node_ttl_s,
                     run_as=run_as, sandbox=sandbox, allowlist=config.command_allowlist,
                     env_allowlist=config.env_allowlist, pass_env=config.pass_env)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=RPC_THREADS))
    worker_pb2_grpc.add_WorkerServicer_to_server(WorkerServicer(slots, worker_id=node_id),
                                                 server)
    if tls is None:
        port = server.add_insecure_port(config.worker_addr)
    else:
        port = server.add_secure_port(config.worker_addr, tls.server_credentials())
    server.start()
    address = advertised_address(host, port, config.worker_advertise_addr)

    registry = NodeRegistry(pool, node_id=node_id, kind="worker", address=address,
                            capacity=config.worker_capacity, labels=config.worker_labels)

    # Each beat renews our runs' leases (a worker cut off from the database kills its
    # runs before the cluster may give them to another), and stops runs cancelled (should
    # a Cancel RPC have been lost) or taken from us while we were paused or cut off.
    heartbeat = Heartbeat(registry, interval_s=config.heartbeat_s,
                          running=lambda: slots.running, on_beat=slots.stop_revoked,
                          on_alive=slots.renewed)
    sent = time.monotonic()
    if registry.announce():
        slots.renewed(sent)
    heartbeat.start()
    log.info("worker listening on %s (capacity %d, workdir %s)", address,
             config.worker_capacity, workdir)

    stop.wait()
    log.info("draining: waiting up to %.0fs for %d running commands", config.shutdown_grace_s,
             slots.running)
    try:
        registry.mark_draining()
    except Exception as exc:  # the database may be down: dispatchers learn it by RPC too
        log.warning("could not mark draining: %s", exc)
    slots.drain(grace_s=config.shutdown_grace_s)
    reaper.close()
    server.stop(grace=1).wait()
    heartbeat.stop()
    registry.leave()
    pool.close()
    if not config.workdir:
        shutil.rmtree(workdir, ignore_errors=True)  # ours alone: made at start-up
    return 0


if __name__ == "__main__":
    sys.exit(main())
