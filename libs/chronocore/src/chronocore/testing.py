"""An in-memory stand-in for the database seam, for unit tests of what is built on the
repositories (the claim loop, the dispatcher, the slot pool, the materializer, the
sweeper) with no PostgreSQL.

``FakeQueries`` answers each named statement from ``answers`` (rows, or a function of
the parameters returning rows; none: no rows) and records every call. A call is checked as
PostgreSQL would check it: the name must be in queries.sql and the parameters must be
exactly the statement's placeholders, so a fake cannot drift from the real statements.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from chronocore.queries import QUERIES, Queries, Row

_PLACEHOLDER = re.compile(r"%\((\w+)\)[sb]")  # text or binary
Answer = list[Row] | Callable[..., list[Row]]


def placeholders(name: str) -> set[str]:
    return set(_PLACEHOLDER.findall(QUERIES[name]))


class FakeQueries(Queries):
    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.transactions = 0

    def called(self, name: str) -> list[dict[str, Any]]:
        """The parameters of each call of ``name``, in order."""
        return [params for called, params in self.calls if called == name]

    def _rows(self, name: str, params: dict[str, Any]) -> list[Row]:
        if name not in QUERIES:
            raise KeyError(f"no statement {name!r} in queries.sql")
        if set(params) != (expected := placeholders(name)):
            raise TypeError(f"{name}: parameters {sorted(params)}, statement takes "
                            f"{sorted(expected)}")
        self.calls.append((name, params))
        answer = self.answers.get(name, [])
        return list(answer(**params) if callable(answer) else answer)

    def one(self, name: str, /, **params: Any) -> Row | None:
        rows = self._rows(name, params)
        return rows[0] if rows else None

    def all(self, name: str, /, **params: Any) -> list[Row]:
        return self._rows(name, params)

    def run(self, name: str, /, **params: Any) -> None:
        self._rows(name, params)

    @contextmanager
    def session(self) -> Iterator[Queries]:
        yield self

    @contextmanager
    def transaction(self) -> Iterator[Queries]:
        self.transactions += 1
        yield self
