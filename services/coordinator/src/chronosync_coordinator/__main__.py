"""``chronosync-coordinator``: heartbeat, sweep for dead nodes' work, run the claim loop,
deliver webhooks.

Stops on SIGTERM/SIGINT after its current step, leaving the registry cleanly.
"""

from __future__ import annotations

import sys
import threading

from chronocore.node import Node, Plan, serve_node
from chronocore.repository import Backoff, TaskRepository
from chronocore.tls import TlsFiles
from chronocore.webhooks import WebhookRepository
from chronosync_coordinator.claim import ClaimLoop
from chronosync_coordinator.dispatch import Dispatcher
from chronosync_coordinator.notify import Deliverer
from chronosync_coordinator.recovery import prune, sweep


def build(node: Node, tls: TlsFiles | None) -> Plan:
    config = node.config
    repo = TaskRepository(node.pool, backoff=Backoff(base_s=config.retry_backoff_s,
                                                     max_s=config.retry_backoff_max_s))

    def on_beat() -> None:
        sweep(repo, ttl_s=config.node_ttl_s, connected_for=node.heartbeat.connected_for,
              sweeper=node.id, beat_s=config.heartbeat_s)
        prune(repo, node.registry, retention_s=config.retention_s)

    node.heartbeat.attach(on_beat=on_beat)
    look_again = threading.Event()  # a freed slot wakes the claim loop at once
    dispatcher = Dispatcher(node.registry, coordinator_id=node.id, ttl_s=config.node_ttl_s,
                            refresh_s=config.heartbeat_s, tls=tls,
                            on_slots_freed=look_again.set)
    loop = ClaimLoop(repo=repo, dispatcher=dispatcher, coordinator_id=node.id,
                     dsn=config.direct_dsn, batch=config.claim_batch,
                     max_idle_s=config.max_idle_s, wake=look_again)
    deliverer = Deliverer(hooks=WebhookRepository(node.pool), owner=node.id,
                          allow=config.webhook_allow, timeout_s=config.webhook_timeout_s,
                          retention_s=config.retention_s)
    return Plan(services=[dispatcher, loop, deliverer], ready="coordinator running")


def main() -> int:
    return serve_node("coordinator", prepare=TlsFiles.from_config, build=build,
                      session_needs="its migrations at start-up and its LISTEN for due "
                      "tasks (one connection, held)")


if __name__ == "__main__":
    sys.exit(main())
