"""``chronosync-worker``: register, heartbeat, serve Dispatch/Cancel/Health, run commands.

Stops on SIGTERM/SIGINT: takes no new work, lets running commands finish within
CHRONOSYNC_SHUTDOWN_GRACE_S, cancels the rest, then leaves the registry.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass

from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.node import Hooks, Node, Plan, serve_node
from chronocore.reaper import Reaper
from chronocore.repository import Backoff, TaskRepository
from chronocore.runner import RunAs, Sandbox
from chronocore.tls import TlsFiles
from chronosync_worker.pool import SlotPool
from chronosync_worker.server import RpcServer, WorkerServicer

# Slots record starts and outcomes through two group-commit writers, one connection
# each; the rest of the pool is heartbeats, revocation checks and hand-backs.
WRITER_CONNECTIONS = 2


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


@dataclass(frozen=True)
class Checked:
    """What the configuration alone decides, checked before the database is waited for."""
    host: str
    tls: TlsFiles | None
    run_as: RunAs | None
    sandbox: Sandbox | None


def prepare(config: Config) -> Checked:
    host, _ = split_host_port(config.worker_addr, name="CHRONOSYNC_WORKER_ADDR")
    tls = TlsFiles.from_config(config)
    if tls is None and not is_loopback(host) and not config.insecure:
        raise ConfigError(
            f"CHRONOSYNC_WORKER_ADDR {config.worker_addr} is beyond loopback: configure "
            "mutual TLS (CHRONOSYNC_TLS_CA/CERT/KEY) so only the cluster can dispatch "
            "commands here, or set CHRONOSYNC_INSECURE=1")
    return Checked(host, tls, command_user(config), command_sandbox(config))


def build(node: Node, checked: Checked) -> Plan:
    config = node.config
    repo = TaskRepository(node.pool, backoff=Backoff(base_s=config.retry_backoff_s,
                                                     max_s=config.retry_backoff_max_s))
    workdir = config.workdir or tempfile.mkdtemp(prefix="chronosync-worker-")
    if checked.run_as is not None and not config.workdir:
        os.chown(workdir, checked.run_as.uid, checked.run_as.gid)
    reaper = Reaper()
    slots = SlotPool(repo=repo, worker_id=node.id, capacity=config.worker_capacity,
                     workdir=workdir, kill_grace_s=config.kill_grace_s, reaper=reaper,
                     lease_s=config.node_ttl_s / 2, ttl_s=config.node_ttl_s,
                     run_as=checked.run_as, sandbox=checked.sandbox,
                     allowlist=config.command_allowlist, env_allowlist=config.env_allowlist,
                     pass_env=config.pass_env, grace_s=config.shutdown_grace_s,
                     on_drain=node.registry.mark_draining)
    rpc = RpcServer(WorkerServicer(slots, worker_id=node.id), addr=config.worker_addr,
                    tls=checked.tls)
    address = advertised_address(checked.host, rpc.port, config.worker_advertise_addr)
    node.registry.address = address
    node.registry.capacity = config.worker_capacity
    node.registry.labels = config.worker_labels
    # Each beat renews our runs' leases (a worker cut off from the database kills its
    # runs before the cluster may give them to another), and stops runs cancelled (should
    # a Cancel RPC have been lost) or taken from us while we were paused or cut off.
    node.heartbeat.attach(running=lambda: slots.running, on_beat=slots.stop_revoked,
                          on_alive=slots.renewed)
    # Stopped in reverse: the drain, then the reaper (nothing left to kill), then the
    # server, which answers Cancel and says "draining" until the drain is done.
    services = [rpc, reaper, slots]
    if not config.workdir:  # ours alone, made here: removed once the rest has stopped
        services.insert(0, Hooks(on_stop=lambda: shutil.rmtree(workdir, ignore_errors=True)))
    return Plan(services=services,
                ready=f"worker listening on {address} (capacity {config.worker_capacity}, "
                      f"workdir {workdir})")


def main() -> int:
    return serve_node("worker", prepare=prepare, build=build,
                      extra_connections=WRITER_CONNECTIONS)


if __name__ == "__main__":
    sys.exit(main())
