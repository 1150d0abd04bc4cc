"""Named queries: every name the Python code uses exists in queries.sql, and the loader
refuses a name defined twice."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chronocore.queries import QUERIES, parse

ROOT = Path(__file__).resolve().parents[2]
# QUERIES["name"]; the seam's verbs, which take a query name first: db.one("name", ...),
# tx.all, run (possibly with the name on the next line); insert_by_hand(tx, "name", ...).
REFERENCE = re.compile(
    r"""QUERIES\[\s*["'](\w+)["']\s*\]|\.(?:one|all|run)\(\s*["'](\w+)["']"""
    r"""|\binsert_by_hand\(\s*\w+,\s*["'](\w+)["']"""
)


def referenced_query_names() -> dict[str, list[str]]:
    """``{name: [where, ...]}`` over the sources of libs/ and services/.

    Only modules that import ``chronocore.queries`` run statements; others may have
    unrelated methods of the same name (``subprocess.run("initdb", ...)``).
    """
    found: dict[str, list[str]] = {}
    for path in sorted([*ROOT.glob("libs/*/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py")]):
        text = path.read_text(encoding="utf-8")
        if "chronocore.queries import" not in text:
            continue
        for match in REFERENCE.finditer(text):
            name = match[1] or match[2] or match[3]
            line = text.count("\n", 0, match.start()) + 1
            found.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return found


def test_every_query_the_code_names_exists_in_queries_sql() -> None:
    referenced = referenced_query_names()
    # The scan itself works: it sees names used in the repository and the registry, in
    # a transaction, and through insert_by_hand.
    assert {"claim_due", "insert_task", "mark_finished", "heartbeat", "delete_job",
            "insert_retry"} <= set(referenced)
    missing = {name: where for name, where in referenced.items() if name not in QUERIES}
    assert not missing, f"not defined in queries.sql: {missing}"


def test_parse_rejects_a_query_name_defined_twice() -> None:
    text = (
        "-- preamble\n\n"
        "-- name: first --\n-- one\nSELECT 1;\n\n"
        "-- name: second --\n-- two\nSELECT 2;\n\n"
        "-- name: first --\n-- again\nSELECT 3;\n"
    )
    with pytest.raises(ValueError, match="first"):
        parse(text)


def test_parse_splits_statements_by_name() -> None:
    queries = parse("-- p\n-- name: a --\nSELECT 1;\n\n-- name: b --\n-- d\nSELECT 2;\n")
    assert list(queries) == ["a", "b"]
    assert queries["a"] == "SELECT 1"
    assert queries["b"] == "-- d\nSELECT 2"
