"""Connections to PostgreSQL: the shared pool every service uses, and the dedicated
autocommit connection a LISTEN needs.

PostgreSQL is the only source of truth, so a node without it can do nothing useful: the
pool reconnects on its own (with backoff), and callers turn ``psycopg.OperationalError``
into "not ready" rather than crashing.
"""

from __future__ import annotations

import logging

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

POOL_WAIT_S = 2.0


def open_pool(dsn: str, *, size: int, name: str) -> ConnectionPool:
    """A pool of autocommit connections returning rows as dicts.

    Autocommit because every statement in queries.sql is one atomic unit on its own; the
    few places needing a transaction open one explicitly.
    """
    pool = ConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        name=name,
        kwargs={"autocommit": True, "row_factory": dict_row},
        # Drop connections broken by a database restart before handing them out.
        check=ConnectionPool.check_connection,
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
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return conn
