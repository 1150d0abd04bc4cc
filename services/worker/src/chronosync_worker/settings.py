"""What the worker's configuration alone decides, checked before it waits for the
database (a refusal is a bad configuration: exit 2): who runs the commands, in what
sandbox, whether its address needs TLS, whether the spawn gate works there; and the
address it advertises.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from chronocore.config import Config, ConfigError, is_loopback, split_host_port
from chronocore.runner import RunAs, Sandbox, gate_fault
from chronocore.tls import TlsFiles

log = logging.getLogger(__name__)


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
    """What ``prepare`` found: the bound host, and how commands and calls are guarded."""

    host: str
    tls: TlsFiles | None
    run_as: RunAs | None
    sandbox: Sandbox | None
    gated: bool  # commands check their spawn's deadline themselves (runner.gated)


def prepare(config: Config) -> Checked:
    host, _ = split_host_port(config.worker_addr, name="CHRONOSYNC_WORKER_ADDR")
    tls = TlsFiles.from_config(config)
    if tls is None and not is_loopback(host) and not config.insecure:
        raise ConfigError(
            f"CHRONOSYNC_WORKER_ADDR {config.worker_addr} is beyond loopback: configure "
            "mutual TLS (CHRONOSYNC_TLS_CA/CERT/KEY) so only the cluster can dispatch "
            "commands here, or set CHRONOSYNC_INSECURE=1")
    run_as, sandbox = command_user(config), command_sandbox(config)
    if (fault := gate_fault(run_as=run_as, sandbox=sandbox)) is not None:
        log.warning("spawning without the gate: %s. A worker frozen between its last "
                    "check of a claim and the spawn may then start an attempt already "
                    "recovered (README, Guarantees)", fault)
    return Checked(host, tls, run_as, sandbox, gated=fault is None)
