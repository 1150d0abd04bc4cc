"""``chronosync-scheduler``: the HTTP API on CHRONOSYNC_HTTP_ADDR, plus its heartbeat.

Stops on SIGTERM/SIGINT: stops accepting connections, then leaves the registry.
"""

from __future__ import annotations

import logging
import socket
import sys
import threading

from chronocore import db
from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.node import migrate_when_reachable, setup_logging, stop_event_on_signals
from chronocore.registry import Heartbeat, NodeRegistry, new_node_id
from chronocore.repository import JobRepository, TaskRepository
from chronocore.tls import TlsFiles
from chronosync_scheduler.api import Api
from chronosync_scheduler.http import make_server
from chronosync_scheduler.materializer import Materializer

log = logging.getLogger("chronosync.scheduler")


def advertised_address(host: str, port: int, http_addr: str) -> str:
    """What GET /nodes shows: bound to every interface, the host name others can reach."""
    if host in ("0.0.0.0", "::", ""):
        return f"{socket.gethostname()}:{port}"
    return http_addr


def main() -> int:
    node_id = new_node_id("scheduler")
    setup_logging(node_id)
    try:
        config = Config.from_env()
        host, port = split_host_port(config.http_addr, name="CHRONOSYNC_HTTP_ADDR")
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    if config.api_token is None:
        if not is_loopback(host) and not config.insecure:
            log.error("refusing to serve %s without CHRONOSYNC_API_TOKEN: anyone who can "
                      "reach it could run commands on the cluster. Set a token, or "
                      "CHRONOSYNC_INSECURE=1 if a network boundary protects it.", config.http_addr)
            return 2
        log.warning("CHRONOSYNC_API_TOKEN is not set: the API accepts anyone (dev only)")
    stop = stop_event_on_signals()
    if not migrate_when_reachable(config, stop):
        return 0
    pool = db.open_pool(config.dsn, size=config.pool_size, name="scheduler",
                        pooled=config.pooled, timeouts=config.session_timeouts)
    try:
        tls = TlsFiles.from_config(config)
    except ConfigError as exc:
        log.error("bad configuration: %s", exc)
        return 2
    registry = NodeRegistry(pool, node_id=node_id, kind="scheduler",
                            address=advertised_address(host, port, config.http_addr))
    jobs = JobRepository(pool, node_ttl_s=config.node_ttl_s)
    api = Api(repo=TaskRepository(pool, node_ttl_s=config.node_ttl_s), jobs=jobs, registry=registry,
              ttl_s=config.node_ttl_s, tls=tls)
    materializer = Materializer(jobs=jobs, registry=registry, horizon_s=config.horizon_s,
                                tls=tls)
    try:
        server = make_server(api, host=host, port=port, api_token=config.api_token)
    except OSError as exc:
        log.error("cannot listen on %s: %s", config.http_addr, exc)
        return 1
    heartbeat = Heartbeat(registry, interval_s=config.heartbeat_s)
    registry.announce()
    heartbeat.start()
    materializer.start()
    serving = threading.Thread(target=server.serve_forever, name="http")
    serving.start()
    log.info("scheduler listening on http://%s:%d", *server.server_address[:2])

    stop.wait()
    materializer.stop()
    server.shutdown()
    serving.join()
    server.server_close()
    heartbeat.stop()
    registry.leave()
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
