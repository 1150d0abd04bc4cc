"""chronocore/schema.sql is what the migrations make: regenerated here from an empty
database of a fresh cluster (pg_dump beside its server) and compared line by line."""

from __future__ import annotations

import difflib

import pytest

from chronosync_dev.pgcluster import PostgresNotFound, find_postgres
from chronosync_dev.schema import generate, schema_file


def test_schema_sql_is_what_the_migrations_make() -> None:
    try:
        find_postgres()
    except PostgresNotFound as exc:
        pytest.skip(f"no PostgreSQL server binaries to regenerate the schema with: {exc}")
    path = schema_file()
    assert path.is_file(), f"{path} is missing: `make schema` writes it"
    committed, generated = path.read_text(), generate()
    diff = "".join(difflib.unified_diff(committed.splitlines(keepends=True),
                                        generated.splitlines(keepends=True),
                                        "schema.sql (committed)", "the migrations"))
    assert not diff, f"schema.sql differs from the migrations: run `make schema`\n{diff}"
