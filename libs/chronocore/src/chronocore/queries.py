"""The named SQL statements of queries.sql, and the one seam every repository runs them
through.

Every statement ChronoSync runs lives in queries.sql under a ``-- name: NAME --`` header;
Python code refers to statements by name only and never builds SQL from pieces.
``Queries`` runs them by name: ``one``, ``all`` and ``run`` each take a pooled
connection for one autocommit statement; ``session()`` gives the same three on one
connection (a few statements in a row, each still its own commit), ``transaction()`` on
one connection inside one transaction. ``chronocore.testing`` fakes it, keyed by statement
name, so that the loops built on the repositories can be tested with no database.
The tools (``chronosync_dev``) and the bench keep theirs in a queries.sql of their own,
in the same form, read by ``load`` and ``parse``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import fields
from datetime import datetime
from importlib import resources
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

_HEADER = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)

Row = dict[str, Any]
T = TypeVar("T")


def parse(text: str) -> dict[str, str]:
    """Split queries.sql into ``{name: statement}``; the description comments stay in."""
    parts = _HEADER.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load(package: str) -> dict[str, str]:
    """The statements of the queries.sql shipped in ``package``."""
    return parse(resources.files(package).joinpath("queries.sql").read_text(encoding="utf-8"))


QUERIES: dict[str, str] = load("chronocore")


def row_as(cls: type[T], row: Row) -> T:
    """A row as the dataclass ``cls``: the columns it has fields for (a field with a
    default may have no column; other columns are ignored)."""
    return cls(**{f.name: row[f.name] for f in fields(cls)  # type: ignore[arg-type]
                  if f.name in row})


class Queries:
    """Named statements run on a pool of autocommit connections."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    @staticmethod
    def over(db: Queries | ConnectionPool) -> Queries:
        """``db`` itself, or a pool wrapped: repositories take either."""
        return db if isinstance(db, Queries) else Queries(db)

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Row]]:
        return self._pool.connection()

    def one(self, name: str, /, **params: Any) -> Row | None:
        with self._connection() as conn:
            return conn.execute(QUERIES[name], params or None).fetchone()

    def all(self, name: str, /, **params: Any) -> list[Row]:
        with self._connection() as conn:
            return conn.execute(QUERIES[name], params or None).fetchall()

    def run(self, name: str, /, **params: Any) -> None:
        with self._connection() as conn:
            conn.execute(QUERIES[name], params or None)

    def now(self) -> datetime:
        """The database's clock (the only one that decides)."""
        row = self.one("database_now")
        assert row is not None
        return row["now"]

    @contextmanager
    def session(self) -> Iterator[Queries]:
        with self._connection() as conn:
            yield _OnConnection(conn)

    @contextmanager
    def transaction(self) -> Iterator[Queries]:
        """The same verbs on one connection, committed together when the block ends (or
        rolled back if it raises)."""
        with self._connection() as conn, conn.transaction():
            yield _OnConnection(conn)


class _OnConnection(Queries):
    def __init__(self, conn: psycopg.Connection[Row]) -> None:
        self._conn = conn

    def _connection(self) -> AbstractContextManager[psycopg.Connection[Row]]:
        return nullcontext(self._conn)
