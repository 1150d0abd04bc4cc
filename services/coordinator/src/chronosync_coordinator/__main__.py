"""``chronosync-coordinator``: heartbeat, sweep for dead nodes' work, run the claim loop.

Stops on SIGTERM/SIGINT after its current step, leaving the registry cleanly.
"""

from __future__ import annotations

import logging
import sys
import threading

from chronocore import db
from chronocore.config import Config, ConfigError
from chronocore.node import migrate_when_reachable, setup_logging, stop_event_on_signals
from chronocore.registry import Heartbeat, NodeRegistry, new_node_id
from chronocore.repository import Backoff, TaskRepository
from chronocore.tls import TlsFiles
from chronosync_coordinator.claim import ClaimLoop
from chronosync_coordinator.dispatch import Dispatcher
from chronosync_coordinator.recovery import prune, sweep

log = logging.getLogger("chronosync.coordinator")


def main() -> int:
    node_id = new_node_id("coordinator")
    setup_logging(node_id)
    try:
        config = Config.from_env()
        tls = TlsFiles.from_config(config)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    stop = stop_event_on_signals()
    if not migrate_when_reachable(config, stop):
        return 0
    pool = db.open_pool(config.dsn, size=config.pool_size, name="coordinator",
                        pooled=config.pooled, timeouts=config.session_timeouts)
    repo = TaskRepository(pool, backoff=Backoff(base_s=config.retry_backoff_s,
                                                max_s=config.retry_backoff_max_s))
    registry = NodeRegistry(pool, node_id=node_id, kind="coordinator")
    dispatcher = Dispatcher(registry, coordinator_id=node_id, ttl_s=config.node_ttl_s,
                            refresh_s=config.heartbeat_s, tls=tls,
                            on_slots_freed=lambda: loop.wake())
    def on_beat() -> None:
        sweep(repo, ttl_s=config.node_ttl_s, connected_for=heartbeat.connected_for)
        prune(repo, registry, retention_s=config.retention_s)

    heartbeat = Heartbeat(registry, interval_s=config.heartbeat_s, on_beat=on_beat)
    loop = ClaimLoop(repo=repo, dispatcher=dispatcher, coordinator_id=node_id,
                     dsn=config.direct_dsn, batch=config.claim_batch, max_idle_s=config.max_idle_s)
    registry.announce()
    heartbeat.start()
    loop.start()
    runner = threading.Thread(target=loop.run, name="claim-loop")
    runner.start()
    log.info("coordinator running")

    stop.wait()
    loop.stop()
    runner.join()
    heartbeat.stop()
    dispatcher.close()
    registry.leave()
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
