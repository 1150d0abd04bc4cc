"""What every ChronoSync process does the same way: logging with its node id, waiting for
PostgreSQL (with backoff) and migrating it, turning SIGTERM/SIGINT into a stop event, and
the life of its services (``serve_node``).

Every long-running part of a node is a ``Service``: ``start()`` begins its work (its
threads, its socket), ``stop()`` ends it and waits for it, and is safe to call twice and
before ``start()``; a part that loops is a ``chronocore.lifecycle.Loop``, whose one step,
``run_once()``, tests drive. ``serve_node`` owns what is common: logging, configuration,
the wait for the database, the pool, the registry and heartbeat, signals, and the order
of shutdown. The heartbeat starts first (it announces the node) and stops last (it leaves
the registry); the node's own services start in the order given and stop in reverse. So
each ``__main__`` is a short list of its services.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from chronocore import db
from chronocore.config import Config, ConfigError
from chronocore.lifecycle import Lifecycle
from chronocore.migrate import apply_migrations
from chronocore.registry import Heartbeat, NodeRegistry, new_node_id

log = logging.getLogger(__name__)

# Reconnect backoff while the database is unreachable: quick at first, then at most
# every few seconds, so a restarted database is found again promptly.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 3.0


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, node, logger, message, and task_id when the
    line is about a task (``extra={"task_id": ...}``)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "node": self._node_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            line["task_id"] = task_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(node_id: str) -> None:
    """Readable lines by default; JSON lines with CHRONOSYNC_LOG_FORMAT=json. Either way
    every line names the node, and lines about a task name the task."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("CHRONOSYNC_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonLines(node_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s"))
    level = os.environ.get("CHRONOSYNC_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, handlers=[handler])


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def say_session_needs(kind: str, config: Config, needs: str) -> None:
    """The start-up line naming what this node needs a session for (``needs``) and where
    it opens one: an operator putting a transaction pooler in front reads what must
    bypass it."""
    if config.pooled:
        log.info("CHRONOSYNC_SESSION_DSN is set, so CHRONOSYNC_DSN is taken to be a "
                 "transaction pooler (no prepared statements on it); this %s needs a "
                 "session for %s and opens it on CHRONOSYNC_SESSION_DSN", kind, needs)
    else:
        log.info("this %s needs a session for %s and opens it on CHRONOSYNC_DSN (behind a "
                 "transaction pooler, set CHRONOSYNC_SESSION_DSN to a direct connection)",
                 kind, needs)


def migrate_when_reachable(config: Config, stop: threading.Event) -> bool:
    """Apply migrations, retrying until the database answers; False if stopped first.
    They take a session-wide view of the schema, so they use the direct DSN."""
    delay = RECONNECT_FIRST_S
    while not stop.is_set():
        try:
            applied = apply_migrations(config.direct_dsn)
        except psycopg.OperationalError as exc:
            log.warning("database unreachable (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        if applied:
            log.info("applied migrations %s", applied)
        return True
    return False


class Service(Protocol):
    """A long-running part of a node (see the module's docstring)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Hooks:
    """A ``Service`` made of two plain calls, for a part with no thread of its own (a gRPC
    server, a directory to remove). ``stop`` calls ``on_stop`` once, and only if started."""

    def __init__(self, *, on_start: Callable[[], None] = lambda: None,
                 on_stop: Callable[[], None] = lambda: None) -> None:
        self._on_start = on_start
        self._on_stop = on_stop
        self._life = Lifecycle()

    def start(self) -> None:
        if self._life.begin():
            self._on_start()

    def stop(self) -> None:
        if self._life.end():
            self._on_stop()


def run_services(services: Sequence[Service], stop: threading.Event, *,
                 ready: Callable[[], None] = lambda: None) -> None:
    """Start ``services`` in order, call ``ready``, wait for ``stop``, then stop them in
    reverse order. If a start fails, those already started are stopped (in reverse) before
    the error goes on: no thread of theirs keeps the process alive."""
    started: list[Service] = []
    try:
        for service in services:
            started.append(service)
            service.start()
        ready()
        stop.wait()
    finally:
        for service in reversed(started):
            service.stop()


class CannotStart(Exception):
    """A node's build found it cannot run (a port taken): logged, and the process exits 1."""


@dataclass
class Node:
    """What ``serve_node`` hands a node's ``build``. The registry's ``address``,
    ``capacity`` and ``labels`` and the heartbeat's hooks (``Heartbeat.attach``) may be set
    there; both start only after ``build`` returns."""

    id: str
    kind: str
    config: Config
    pool: ConnectionPool
    registry: NodeRegistry
    heartbeat: Heartbeat


@dataclass
class Plan:
    """What a node runs: its services, started in this order and stopped in reverse
    (between the heartbeat's start and its stop), and the line logged once all started."""

    services: list[Service]
    ready: str


P = TypeVar("P")


def serve_node(kind: str, *, prepare: Callable[[Config], P],
               build: Callable[[Node, P], Plan], connections: int = 4,
               session_needs: str = "its migrations at start-up") -> int:
    """Run one node until SIGTERM or SIGINT; returns the process's exit code.

    ``prepare`` checks what the configuration alone decides (raising ``ConfigError``:
    exit 2) before anything waits for the database; ``build`` makes the node's services
    once the database is migrated and the pool open. ``connections``: the most the node
    opens unless CHRONOSYNC_POOL_SIZE says otherwise. ``session_needs``: what the node
    needs a session (not a pooled transaction) for, said at start-up."""
    node_id = new_node_id(kind)
    setup_logging(node_id)
    node_log = logging.getLogger(f"chronosync.{kind}")
    try:
        config = Config.from_env()
        prepared = prepare(config)
    except ConfigError as exc:
        node_log.error("bad configuration: %s", exc)
        return 2
    stop = stop_event_on_signals()
    say_session_needs(kind, config, session_needs)
    if not migrate_when_reachable(config, stop):
        return 0
    pool = db.open_pool(config.dsn, size=config.pool_size or connections, name=kind,
                        pooled=config.pooled, timeouts=config.session_timeouts,
                        application_name=node_id)
    registry = NodeRegistry(pool, node_id=node_id, kind=kind)
    heartbeat = Heartbeat(registry, interval_s=config.heartbeat_s)
    try:
        plan = build(Node(id=node_id, kind=kind, config=config, pool=pool,
                          registry=registry, heartbeat=heartbeat), prepared)
    except CannotStart as exc:
        node_log.error("%s", exc)
        return 1
    run_services([heartbeat, *plan.services], stop,
                 ready=lambda: node_log.info("%s", plan.ready))
    pool.close()
    return 0
