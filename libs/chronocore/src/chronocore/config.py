"""Configuration from the environment (12-factor), read once into a frozen ``Config``.

Every variable is ``CHRONOSYNC_*``; see the README's configuration table. Bad values fail
at start-up with a message naming the variable, never later.

Secrets (the DSNs, the API token) may come from files instead (``CHRONOSYNC_DSN_FILE``,
``CHRONOSYNC_SESSION_DSN_FILE``, ``CHRONOSYNC_API_TOKEN_FILE``). A node reading its own
environment removes them from it afterwards, so no process it starts inherits them, and
makes itself non-dumpable, so the environment it was started with (still in
/proc/<pid>/environ) is no one's to read but root's.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from chronocore.db import SessionTimeouts
from chronocore.labels import LabelError, parse_worker_labels
from chronocore.prctl import make_undumpable
from chronocore.webhooks import parse_allowlist

# Variables holding secrets, each with the variable that may name a file holding it.
SECRET_NAMES = {"CHRONOSYNC_DSN": "CHRONOSYNC_DSN_FILE",
                "CHRONOSYNC_SESSION_DSN": "CHRONOSYNC_SESSION_DSN_FILE",
                "CHRONOSYNC_API_TOKEN": "CHRONOSYNC_API_TOKEN_FILE"}


class ConfigError(ValueError):
    """A configuration variable is missing or malformed."""


N = TypeVar("N", int, float)


def _number(env: Mapping[str, str], name: str, default: N) -> N:
    """A positive number, whole if ``default`` is (an ``int``)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ConfigError(f"{name} must be {what}, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw!r}")
    return value


def _seconds_or_none(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, where 0 is allowed (none at all)."""
    raw = env.get(name)
    try:
        if raw is not None and float(raw) == 0:
            return 0.0
    except ValueError:
        pass
    return _number(env, name, default)


def _seconds_or_off(env: Mapping[str, str], name: str, default: float) -> float:
    """Seconds, where 0 means no bound."""
    raw = env.get(name)
    if raw == "0":
        return 0.0
    return _number(env, name, default)


def _allowlist(raw: str | None) -> tuple[str, ...] | None:
    """Newline-separated command prefixes (commands may contain commas)."""
    if raw is None or not raw.strip():
        return None
    return tuple(line.strip() for line in raw.splitlines() if line.strip())


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """``name``'s value, or the content of the file its ``_FILE`` variable names (one
    trailing newline dropped); never both."""
    file_name = SECRET_NAMES[name]
    value, path = env.get(name) or None, env.get(file_name) or None
    if value is not None and path is not None:
        raise ConfigError(f"set {name} or {file_name}, not both")
    if path is None:
        return value
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file_name}: cannot read {path}: {exc}") from None
    content = content.removesuffix("\n").removesuffix("\r")
    return content or None


def hide_secrets() -> None:
    """Remove the secrets from this process's environment (children start without them)
    and make it non-dumpable (the environment it started with stays in /proc)."""
    for name in SECRET_NAMES:
        os.environ.pop(name, None)
    make_undumpable()


def _labels(env: Mapping[str, str]) -> dict[str, str]:
    try:
        return parse_worker_labels(env.get("CHRONOSYNC_WORKER_LABELS"),
                                   host=socket.gethostname())
    except LabelError as exc:
        raise ConfigError(f"CHRONOSYNC_WORKER_LABELS: {exc} (expected key=value,key=value)"
                          ) from None


def _names(raw: str | None) -> tuple[str, ...]:
    """Variable names separated by commas or white space; ``PREFIX*`` matches a family."""
    return tuple(part for part in (raw or "").replace(",", " ").split() if part)


@dataclass(frozen=True, kw_only=True)
class Config:
    dsn: str
    # A direct connection for what needs a session (the coordinators' LISTEN, the
    # migrations). Setting it says CHRONOSYNC_DSN goes through a transaction pooler such
    # as PgBouncer: statements on it are then not prepared.
    session_dsn: str | None = None
    http_addr: str = "127.0.0.1:8081"
    api_token: str | None = None
    worker_addr: str = "127.0.0.1:0"
    worker_advertise_addr: str | None = None
    worker_capacity: int = 2 * (os.cpu_count() or 1)
    # Workers: what they advertise, for tasks' targets (host=<host name> unless given).
    worker_labels: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    heartbeat_s: float = 1.0
    node_ttl_s: float = 5.0
    # A coordinator with nothing due sleeps at most this long between looks at the
    # database: NOTIFY wakes it early, this bounds the cost of a lost notification.
    max_idle_s: float = 2.0
    claim_batch: int = 64
    kill_grace_s: float = 10.0
    # Workers: on SIGTERM, how long running commands may go on before they are given up.
    shutdown_grace_s: float = 30.0
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 300.0
    # Database connections per node, at most; 0: the node's own default (serve_node).
    pool_size: int = 0
    # Schedulers make a recurring job's tasks this far ahead of their time.
    horizon_s: float = 5.0
    # Finished tasks older than this are pruned (in small batches, by every coordinator),
    # and rows of nodes stopped or dead for as long.
    retention_s: float = 30 * 86400.0
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # Workers: run commands as this user (when started as root); root only if allowed.
    run_as: str | None = None
    allow_root: bool = False
    # Workers that are not root: each command in its own user, PID and mount namespaces,
    # with these paths hidden (runner.Sandbox).
    sandbox: bool = False
    sandbox_hide: tuple[str, ...] = ()
    # Workers: command prefixes allowed here (None: any command).
    command_allowlist: tuple[str, ...] | None = None
    # Workers with a command allowlist: the task env names they accept (none by default).
    env_allowlist: tuple[str, ...] = ()
    # Workers: variables of their own environment passed on to commands, beyond the
    # ordinary ones (runner.PASSED_ENV); never anything else, so no secret leaks.
    pass_env: tuple[str, ...] = ()
    # Listen beyond loopback without a token (scheduler) or TLS (worker).
    insecure: bool = False
    # Server-side bounds on every session of a node's pool (see chronocore.db).
    lock_timeout_s: float = SessionTimeouts.lock_s
    idle_in_transaction_timeout_s: float = SessionTimeouts.idle_in_transaction_s
    statement_timeout_s: float = SessionTimeouts.statement_s
    # URL prefixes webhooks may call (none: webhooks are refused); checked by the
    # schedulers at submission and by the coordinators before each attempt.
    webhook_allow: tuple[str, ...] = ()
    # Coordinators: how long one webhook request may take.
    webhook_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        """The configuration in ``env``; without one, in this process's environment,
        whose secrets are then hidden (``hide_secrets``)."""
        if env is None:
            config = cls._read(os.environ)
            hide_secrets()
            return config
        return cls._read(env)

    @classmethod
    def _read(cls, env: Mapping[str, str]) -> Config:
        dsn = _secret(env, "CHRONOSYNC_DSN")
        if not dsn:
            raise ConfigError("CHRONOSYNC_DSN (or CHRONOSYNC_DSN_FILE) is required (a libpq "
                              "conninfo string or URI)")
        defaults = cls(dsn=dsn)
        return cls(
            dsn=dsn,
            session_dsn=_secret(env, "CHRONOSYNC_SESSION_DSN"),
            http_addr=env.get("CHRONOSYNC_HTTP_ADDR") or defaults.http_addr,
            api_token=_secret(env, "CHRONOSYNC_API_TOKEN"),
            worker_addr=env.get("CHRONOSYNC_WORKER_ADDR") or defaults.worker_addr,
            worker_advertise_addr=env.get("CHRONOSYNC_WORKER_ADVERTISE_ADDR") or None,
            worker_capacity=_number(env, "CHRONOSYNC_WORKER_CAPACITY", defaults.worker_capacity),
            worker_labels=_labels(env),
            workdir=env.get("CHRONOSYNC_WORKDIR") or None,
            heartbeat_s=_number(env, "CHRONOSYNC_HEARTBEAT_S", defaults.heartbeat_s),
            node_ttl_s=_number(env, "CHRONOSYNC_NODE_TTL_S", defaults.node_ttl_s),
            max_idle_s=_number(env, "CHRONOSYNC_MAX_IDLE_S", defaults.max_idle_s),
            claim_batch=_number(env, "CHRONOSYNC_CLAIM_BATCH", defaults.claim_batch),
            kill_grace_s=_number(env, "CHRONOSYNC_KILL_GRACE_S", defaults.kill_grace_s),
            shutdown_grace_s=_seconds_or_none(env, "CHRONOSYNC_SHUTDOWN_GRACE_S",
                                              defaults.shutdown_grace_s),
            retry_backoff_s=_number(env, "CHRONOSYNC_RETRY_BACKOFF_S", defaults.retry_backoff_s),
            retry_backoff_max_s=_number(
                env, "CHRONOSYNC_RETRY_BACKOFF_MAX_S", defaults.retry_backoff_max_s
            ),
            pool_size=_number(env, "CHRONOSYNC_POOL_SIZE", defaults.pool_size),
            horizon_s=_number(env, "CHRONOSYNC_HORIZON_S", defaults.horizon_s),
            retention_s=_number(env, "CHRONOSYNC_RETENTION_DAYS", defaults.retention_s / 86400)
            * 86400,
            tls_ca=env.get("CHRONOSYNC_TLS_CA") or None,
            tls_cert=env.get("CHRONOSYNC_TLS_CERT") or None,
            tls_key=env.get("CHRONOSYNC_TLS_KEY") or None,
            run_as=env.get("CHRONOSYNC_RUN_AS") or None,
            allow_root=env.get("CHRONOSYNC_ALLOW_ROOT") == "1",
            sandbox=env.get("CHRONOSYNC_SANDBOX") == "1",
            sandbox_hide=_paths(env, "CHRONOSYNC_SANDBOX_HIDE"),
            command_allowlist=_allowlist(env.get("CHRONOSYNC_COMMAND_ALLOWLIST")),
            env_allowlist=_names(env.get("CHRONOSYNC_ENV_ALLOWLIST")),
            pass_env=_names(env.get("CHRONOSYNC_PASS_ENV")),
            insecure=env.get("CHRONOSYNC_INSECURE") == "1",
            lock_timeout_s=_number(env, "CHRONOSYNC_LOCK_TIMEOUT_S", defaults.lock_timeout_s),
            idle_in_transaction_timeout_s=_number(
                env, "CHRONOSYNC_IDLE_IN_TRANSACTION_TIMEOUT_S",
                defaults.idle_in_transaction_timeout_s),
            statement_timeout_s=_seconds_or_off(env, "CHRONOSYNC_STATEMENT_TIMEOUT_S",
                                                defaults.statement_timeout_s),
            webhook_allow=_webhook_allow(env),
            webhook_timeout_s=_number(env, "CHRONOSYNC_WEBHOOK_TIMEOUT_S",
                                      defaults.webhook_timeout_s),
        )


    @property
    def session_timeouts(self) -> SessionTimeouts:
        return SessionTimeouts(lock_s=self.lock_timeout_s,
                               idle_in_transaction_s=self.idle_in_transaction_timeout_s,
                               statement_s=self.statement_timeout_s)

    @property
    def pooled(self) -> bool:
        """CHRONOSYNC_DSN goes through a transaction pooler (see ``session_dsn``)."""
        return self.session_dsn is not None

    @property
    def direct_dsn(self) -> str:
        """Where what needs a session connects."""
        return self.session_dsn or self.dsn


def _webhook_allow(env: Mapping[str, str]) -> tuple[str, ...]:
    try:
        return parse_allowlist(env.get("CHRONOSYNC_WEBHOOK_ALLOW"))
    except ValueError as exc:
        raise ConfigError(f"CHRONOSYNC_WEBHOOK_ALLOW: {exc} (expected comma-separated "
                          "http:// or https:// URL prefixes)") from None


def _paths(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """Absolute paths separated by ``:``, as in PATH."""
    paths = tuple(p for p in (env.get(name) or "").split(":") if p)
    if relative := [p for p in paths if not os.path.isabs(p)]:
        raise ConfigError(f"{name} takes absolute paths separated by ':', got {relative[0]!r}")
    return paths


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host_port(addr: str, *, name: str) -> tuple[str, int]:
    """``"127.0.0.1:8081"`` -> ``("127.0.0.1", 8081)``; ``"[::1]:80"`` works too."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"{name} must look like HOST:PORT, got {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
