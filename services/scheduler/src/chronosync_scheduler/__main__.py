"""``chronosync-scheduler``: the HTTP API on CHRONOSYNC_HTTP_ADDR, plus its heartbeat.

Stops on SIGTERM/SIGINT: stops accepting connections, then leaves the registry.
"""

from __future__ import annotations

import sys

from chronocore.node import CannotStart, Node, Plan, serve_node
from chronocore.repository import JobRepository, TaskRepository
from chronocore.webhooks import WebhookRepository
from chronosync_scheduler.api import Api
from chronosync_scheduler.http import make_server
from chronosync_scheduler.materializer import Materializer
from chronosync_scheduler.settings import Listen, advertised_address, prepare


def build(node: Node, listen: Listen) -> Plan:
    config = node.config
    node.registry.address = advertised_address(listen.host, listen.port, config.http_addr)
    jobs = JobRepository(node.pool, node_ttl_s=config.node_ttl_s)
    api = Api(repo=TaskRepository(node.pool, node_ttl_s=config.node_ttl_s), jobs=jobs,
              registry=node.registry, ttl_s=config.node_ttl_s, tls=listen.tls,
              hooks=WebhookRepository(node.pool), webhook_allow=config.webhook_allow)
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
