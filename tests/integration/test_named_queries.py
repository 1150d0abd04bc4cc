"""Every named statement the project runs (chronocore's queries.sql, the tools' and the
bench's) is one PostgreSQL parses and analyses against the migrated schema: a statement
the code calls by name is never first tried by the bench or ``make dev``."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from chronocore.queries import QUERIES, load, parse

ROOT = Path(__file__).resolve().parents[2]
NAMED = {
    "chronocore": QUERIES,
    "chronosync_dev": load("chronosync_dev"),
    "bench": parse((ROOT / "bench" / "queries.sql").read_text(encoding="utf-8")),
}
PLACEHOLDER = re.compile(r"%\((\w+)\)[sb]|%%")  # text or binary


def numbered(statement: str) -> str:
    """psycopg's ``%(name)s`` as PostgreSQL's ``$n`` (one number per name), ``%%`` as ``%``."""
    numbers: dict[str, int] = {}

    def swap(match: re.Match[str]) -> str:
        if match[1] is None:
            return "%"
        return f"${numbers.setdefault(match[1], len(numbers) + 1)}"

    return PLACEHOLDER.sub(swap, statement)


@pytest.mark.parametrize(("source", "name"),
                         [(source, name) for source, queries in NAMED.items()
                          for name in queries])
def test_every_named_statement_parses_against_the_migrated_schema(
        dsn: str, source: str, name: str) -> None:
    with psycopg.connect(dsn) as conn:
        result = conn.pgconn.prepare(b"probe", numbered(NAMED[source][name]).encode())
        message = (result.error_message or b"").decode(errors="replace")
        assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, f"{source}/{name}: {message}"
