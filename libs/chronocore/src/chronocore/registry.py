"""The node registry: every scheduler, coordinator and worker announces itself in the
``nodes`` table and heartbeats there; liveness is judged by the database clock.

A node silent for longer than the TTL is dead, whatever its own clock says. ``Heartbeat``
is the thread each node runs; a database outage only makes it log and try again.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from chronocore import metrics
from chronocore.lifecycle import Loop
from chronocore.queries import Queries, row_as

log = logging.getLogger(__name__)

# A beat later than its interval by more than this means the process was frozen or
# starved (SIGSTOP, a paused VM, swap): the database, and other nodes' heartbeats, may have
# been away meanwhile without any of our beats failing, so connectivity counts afresh.
BEAT_GAP_SLACK_S = 1.0


@dataclass(frozen=True)
class LiveWorker:
    """A worker heartbeating within the TTL and taking work."""

    id: str
    address: str | None
    capacity: int | None
    running: int
    labels: dict[str, str] | None


@dataclass(frozen=True, kw_only=True)
class Node:
    """A node seen within the last hour, its state judged by the database clock."""

    id: str
    kind: str
    host: str
    pid: int
    address: str | None
    capacity: int | None
    running: int
    labels: dict[str, str] | None
    started_at: datetime
    last_heartbeat_at: datetime
    stopped: bool  # stopped cleanly (a dead node's state is "dead" too)
    state: str  # alive, draining or dead


@dataclass(frozen=True)
class MetricsSource:
    id: str
    kind: str
    metrics: dict[str, Any]


def new_node_id(kind: str) -> str:
    return f"{kind}-{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class NodeRegistry:
    def __init__(self, db: Queries | ConnectionPool, *, node_id: str, kind: str,
                 address: str | None = None, capacity: int | None = None,
                 labels: dict[str, str] | None = None) -> None:
        self._db = Queries.over(db)
        self.labels = labels or {}
        self.node_id = node_id
        self.kind = kind
        self.address = address
        self.capacity = capacity

    def register(self) -> None:
        self._db.run("register_node", id=self.node_id, kind=self.kind,
                     host=socket.gethostname(), pid=os.getpid(), address=self.address,
                     capacity=self.capacity, labels=Jsonb(self.labels))

    def announce(self) -> bool:
        """Register at start-up; with the database away, the first heartbeat will.
        True if registered."""
        try:
            self.register()
        except psycopg.OperationalError as exc:
            log.warning("could not register yet (%s); the heartbeat will", exc)
            return False
        return True

    def leave(self) -> None:
        """Say we stopped cleanly (best effort: the TTL says it anyway)."""
        try:
            self._db.run("mark_node_stopped", id=self.node_id)
        except psycopg.Error as exc:
            log.warning("could not mark stopped: %s", exc)

    def heartbeat(self, *, running: int = 0) -> None:
        if not self._db.all("heartbeat", id=self.node_id, running=running,
                            metrics=Jsonb(metrics.REGISTRY.snapshot())):
            self.register()  # our row was lost (or we were declared stopped): come back

    def mark_draining(self) -> None:
        self._db.run("mark_node_draining", id=self.node_id)

    def prune_nodes(self, *, retention_s: float, limit: int) -> int:
        """Delete up to ``limit`` rows of nodes stopped or dead longer than the retention
        age; returns how many."""
        return len(self._db.all("prune_nodes", retention_s=retention_s, limit=limit))

    def metrics_sources(self, *, ttl_s: float) -> list[MetricsSource]:
        return [row_as(MetricsSource, r) for r in self._db.all("metrics_sources", ttl_s=ttl_s)]

    def list_nodes(self, *, ttl_s: float) -> list[Node]:
        return [row_as(Node, r) for r in self._db.all("list_nodes", ttl_s=ttl_s)]

    def live_workers(self, *, ttl_s: float) -> list[LiveWorker]:
        return [row_as(LiveWorker, r) for r in self._db.all("live_workers", ttl_s=ttl_s)]

    def worker_address(self, worker_id: str) -> str | None:
        row = self._db.one("worker_address", id=worker_id)
        return None if row is None else row["address"]


class Heartbeat(Loop):
    """The node's presence in the registry, as a service: ``start`` announces the node
    and beats every ``interval_s`` on its own thread (``on_beat`` runs after each beat);
    ``stop`` ends the beats and leaves the registry. Safe to stop twice, or unstarted.

    ``running`` reports the node's current load for the beat (workers: commands running).
    ``on_alive`` hears, after each beat the database answered (and after the announce),
    the monotonic instant it was begun: the database stamped it no earlier (workers fence
    by it).
    """

    # A beat that fails on its socket is retried as one the database refused.
    TRANSIENT = (psycopg.Error, OSError)

    def __init__(self, registry: NodeRegistry, *, interval_s: float,
                 running: Callable[[], int] = lambda: 0,
                 on_beat: Callable[[], None] | None = None,
                 on_alive: Callable[[float], None] | None = None) -> None:
        super().__init__(name=f"heartbeat-{registry.kind}", interval_s=interval_s,
                         first_wait=True, join_s=5)
        self._registry = registry
        self._running = running
        self._on_beat = on_beat
        self._on_alive = on_alive
        self._connected_since: float | None = None
        self._rested_at: float | None = None  # when the last successful step ended

    def attach(self, *, running: Callable[[], int] | None = None,
               on_beat: Callable[[], None] | None = None,
               on_alive: Callable[[float], None] | None = None) -> None:
        """Set the node's hooks (before ``start``): those given replace the defaults."""
        if running is not None:
            self._running = running
        if on_beat is not None:
            self._on_beat = on_beat
        if on_alive is not None:
            self._on_alive = on_alive

    def _on_start(self) -> None:
        sent = time.monotonic()
        if self._registry.announce() and self._on_alive is not None:
            self._on_alive(sent)

    def _on_stop(self) -> None:
        self._registry.leave()

    def connected_for(self) -> float:
        """Seconds since beats began to succeed without a break (0 while failing, and 0
        once this thread has been silent for longer than a beat should take)."""
        since, rested = self._connected_since, self._rested_at
        if since is None:
            return 0.0
        now = time.monotonic()
        if rested is not None and now - rested > self._interval_s + BEAT_GAP_SLACK_S:
            return 0.0  # frozen since the last beat: what we saw then may be stale
        return now - since

    def run_once(self) -> None:
        began = time.monotonic()
        rested = self._rested_at
        try:
            self._registry.heartbeat(running=self._running())
        except self.TRANSIENT:
            self._connected_since = None
            self._rested_at = None
            raise
        ended = time.monotonic()
        # Two kinds of break, each resetting the wait before others may be judged dead:
        # a beat that had to wait (for a connection, a failover), since others' beats may
        # have waited as long; and a beat that came late after the last one (the process
        # was frozen: a database outage may have come and gone without failing any beat
        # of ours, while every other node's heartbeat went stale).
        late = rested is not None and began - rested > self._interval_s + BEAT_GAP_SLACK_S
        if self._connected_since is None or ended - began > self._interval_s or late:
            if late:
                log.warning("heartbeat %.1fs late (process frozen or starved); "
                            "connectivity counts afresh", began - rested - self._interval_s)
            self._connected_since = ended
        self._rested_at = ended
        try:
            if self._on_alive is not None:
                self._on_alive(began)
            if self._on_beat is not None:
                self._on_beat()
        finally:
            self._rested_at = time.monotonic()
