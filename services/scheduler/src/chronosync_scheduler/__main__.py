"""``chronosync-scheduler``: the HTTP API on CHRONOSYNC_HTTP_ADDR, plus its heartbeat.

Stops on SIGTERM/SIGINT: stops accepting connections, then leaves the registry.
"""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import dataclass

from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.node import CannotStart, Node, Plan, serve_node
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


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls: TlsFiles | None


def prepare(config: Config) -> Listen:
    host, port = split_host_port(config.http_addr, name="CHRONOSYNC_HTTP_ADDR")
    if config.api_token is None:
        if not is_loopback(host) and not config.insecure:
            raise ConfigError(
                f"refusing to serve {config.http_addr} without CHRONOSYNC_API_TOKEN: anyone "
                "who can reach it could run commands on the cluster. Set a token, or "
                "CHRONOSYNC_INSECURE=1 if a network boundary protects it.")
        log.warning("CHRONOSYNC_API_TOKEN is not set: the API accepts anyone (dev only)")
    return Listen(host, port, TlsFiles.from_config(config))


def build(node: Node, listen: Listen) -> Plan:
    config = node.config
    node.registry.address = advertised_address(listen.host, listen.port, config.http_addr)
    jobs = JobRepository(node.pool, node_ttl_s=config.node_ttl_s)
    api = Api(repo=TaskRepository(node.pool, node_ttl_s=config.node_ttl_s), jobs=jobs,
              registry=node.registry, ttl_s=config.node_ttl_s, tls=listen.tls)
    try:
        server = make_server(api, host=listen.host, port=listen.port,
                             api_token=config.api_token)
    except OSError as exc:
        raise CannotStart(f"cannot listen on {config.http_addr}: {exc}") from None
    materializer = Materializer(jobs=jobs, registry=node.registry, horizon_s=config.horizon_s,
                                tls=listen.tls)
    host, port = server.server_address[:2]
    return Plan(services=[server, materializer],
                ready=f"scheduler listening on http://{host}:{port}")


def main() -> int:
    return serve_node("scheduler", prepare=prepare, build=build)


if __name__ == "__main__":
    sys.exit(main())
