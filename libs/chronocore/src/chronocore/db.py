"""Connections to PostgreSQL: the shared pool every service uses, and the dedicated
autocommit connection a LISTEN needs.

PostgreSQL is the only source of truth, so a node without it can do nothing useful: the
pool reconnects on its own (with backoff), and callers turn ``psycopg.OperationalError``
into "not ready" rather than crashing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

POOL_WAIT_S = 2.0
# A pooled connection idle longer than this is checked (one round trip) before use: it
# may have been broken by a database restart. One used more recently is trusted, which
# halves the round trips on a busy worker.
CHECK_IDLE_AFTER_S = 1.0


# A node cut off from the database notices within seconds rather than the kernel's
# default quarter of an hour: keepalives on idle connections, and a bound on how long
# sent data may stay unacknowledged (a query stuck on a dead link fails instead).
CONNECTION_TIMEOUTS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}


@dataclass(frozen=True, kw_only=True)
class SessionTimeouts:
    """Bounds the server puts on every session of a node's pool, so that no client, frozen
    or cut off, can hold others up for long (CHRONOSYNC_*_TIMEOUT_S; see the README).

    - ``lock_s``: a statement waiting this long for a row lock gives up (an error the
      caller retries or answers 503) instead of hanging behind a stuck holder;
    - ``idle_in_transaction_s``: a session that leaves a transaction open this long
      between statements is ended by the server, releasing its locks (a frozen process
      mid-transaction; ChronoSync's own statements hold none across round trips);
    - ``statement_s``: the longest any one statement may run (0: no bound).
    """

    lock_s: float = 5.0
    idle_in_transaction_s: float = 10.0
    statement_s: float = 60.0

    def options(self) -> str:
        """The libpq ``options`` that set them at connection start (milliseconds)."""
        settings = {"lock_timeout": self.lock_s,
                    "idle_in_transaction_session_timeout": self.idle_in_transaction_s,
                    "statement_timeout": self.statement_s}
        return " ".join(f"-c {name}={round(seconds * 1000)}"
                        for name, seconds in settings.items())


def _with_options(dsn: str, timeouts: SessionTimeouts) -> dict[str, str]:
    """The ``options`` connection parameter: the DSN's own, then the timeouts."""
    own = conninfo_to_dict(dsn).get("options") or ""
    return {"options": f"{own} {timeouts.options()}".strip()}


class _Connection(psycopg.Connection):  # type: ignore[type-arg]
    """A connection that remembers when the pool last had it back."""

    last_used: float = 0.0


def _check_if_idle(conn: _Connection) -> None:
    if time.monotonic() - conn.last_used > CHECK_IDLE_AFTER_S:
        ConnectionPool.check_connection(conn)


def _mark_used(conn: _Connection) -> None:
    conn.last_used = time.monotonic()


def open_pool(dsn: str, *, size: int, name: str, pooled: bool = False,
              timeouts: SessionTimeouts | None = None,
              application_name: str | None = None) -> ConnectionPool:
    """A pool of autocommit connections returning rows as dicts, each session bounded by
    ``timeouts`` (the defaults unless given). ``application_name``: what
    pg_stat_activity shows for them (a node's id: whose connections are whose).

    Autocommit because every statement in queries.sql is one atomic unit on its own; the
    few places needing a transaction open one explicitly. ``pooled``: ``dsn`` goes through
    a transaction pooler (PgBouncer), where a statement prepared on one server connection
    is unknown on the next, so none is prepared; nor are the timeouts sent (a pooler
    refuses or drops startup options: set them on the database role instead).
    """
    prepare: dict[str, object] = {"prepare_threshold": None} if pooled else {}
    if application_name is not None:
        prepare["application_name"] = application_name
    if not pooled:
        prepare.update(_with_options(dsn, timeouts or SessionTimeouts()))
    pool = ConnectionPool(
        dsn,
        connection_class=_Connection,
        min_size=1,
        max_size=size,
        name=name,
        kwargs={"autocommit": True, "row_factory": dict_row, **CONNECTION_TIMEOUTS,
                **prepare},
        # Drop connections broken by a database restart before handing them out.
        check=_check_if_idle,
        reset=_mark_used,
        # A failed background reconnect gives up at once; the pool then connects again
        # as soon as a request asks, so nodes recover the moment the database is back.
        reconnect_timeout=0,
        # A request waits this long for a connection before answering "unavailable",
        # rather than hanging through a whole database outage.
        timeout=POOL_WAIT_S,
        open=False,
    )
    pool.open(wait=False)
    return pool


def connect_listener(dsn: str, channel: str) -> psycopg.Connection:
    """A dedicated autocommit connection LISTENing on ``channel``."""
    conn = psycopg.connect(dsn, autocommit=True, **CONNECTION_TIMEOUTS)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn
