"""What the scheduler's configuration alone decides, checked before it waits for the
database (a refusal is a bad configuration: exit 2): where it listens, whether that needs
a token; and the address it advertises.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.tls import TlsFiles

log = logging.getLogger("chronosync.scheduler")


def advertised_address(host: str, port: int, http_addr: str) -> str:
    """What GET /nodes shows: bound to every interface, the host name others can reach."""
    if host in ("0.0.0.0", "::", ""):
        return f"{socket.gethostname()}:{port}"
    return http_addr


@dataclass(frozen=True)
class Listen:
    """What ``prepare`` found: where to listen, and the TLS files for calls to workers."""

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
