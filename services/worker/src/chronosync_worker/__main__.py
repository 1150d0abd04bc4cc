"""``chronosync-worker``: register, heartbeat, serve Dispatch/Cancel/Health, run commands.

Stops on SIGTERM/SIGINT: takes no new work, lets running commands finish within
CHRONOSYNC_SHUTDOWN_GRACE_S, cancels the rest, then leaves the registry.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from chronocore.node import Hooks, Node, Plan, serve_node
from chronocore.reaper import Reaper
from chronocore.repository import Backoff, TaskRepository
from chronosync_worker.pool import SlotPool
from chronosync_worker.server import RpcServer, WorkerServicer
from chronosync_worker.settings import Checked, advertised_address, prepare

# A worker's connections: its slots record starts and outcomes through two group-commit
# writers, which take one each only while a batch is in flight; heartbeats, revocation
# checks and hand-backs are single statements between them. Two, so a fleet of a
# hundred workers needs two hundred (or a pooler: README, Deployment).
CONNECTIONS = 2


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
                     run_as=checked.run_as, sandbox=checked.sandbox, gated=checked.gated,
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
                      connections=CONNECTIONS)


if __name__ == "__main__":
    sys.exit(main())
