"""Named queries: every name the Python code uses exists in the queries.sql it reads
(chronocore's, the tools' or the bench's), no module writes SQL in a Python string, and
the loader refuses a name defined twice."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from chronocore.queries import QUERIES, load, parse

ROOT = Path(__file__).resolve().parents[2]
# QUERIES["name"]; the seam's verbs, which take a query name first: db.one("name", ...),
# tx.all, run (possibly with the name on the next line); insert_by_hand(tx, "name", ...).
REFERENCE = re.compile(
    r"""QUERIES\[\s*["'](\w+)["']\s*\]|\.(?:one|all|run)\(\s*["'](\w+)["']"""
    r"""|\binsert_by_hand\(\s*\w+,\s*["'](\w+)["']"""
)


# Where Python runs SQL: the libraries, the services and the bench.
SOURCES = ("libs/*/src/**/*.py", "services/*/src/**/*.py", "bench/*.py")
# A string that starts as a statement does (the way SQL written in Python would).
SQL_TEXT = re.compile(r"^\s*(SELECT\s|INSERT INTO\s|UPDATE \w+ SET\s|DELETE FROM\s|"
                      r"WITH \w+ AS\b|(CREATE|DROP|ALTER) (TABLE|DATABASE|INDEX|"
                      r"FUNCTION|ROLE)\s|VACUUM\b|TRUNCATE\s)")


def sources() -> list[Path]:
    return sorted(path for pattern in SOURCES for path in ROOT.glob(pattern))


def known_names(path: Path) -> set[str]:
    """The statements ``path`` can name: chronocore's, and those of its own package's
    queries.sql (the tools', the bench's)."""
    known = set(QUERIES)
    if path.is_relative_to(ROOT / "bench"):
        known |= set(parse((ROOT / "bench" / "queries.sql").read_text(encoding="utf-8")))
    elif path.is_relative_to(ROOT / "libs"):
        package = path.relative_to(ROOT).parts[3]
        if package != "chronocore" and (path.parents[0] / "queries.sql").exists():
            known |= set(load(package))
    return known


def referenced_query_names() -> dict[str, list[str]]:
    """``{name: [where, ...]}`` over the sources of libs/ and services/.

    Only modules that use ``QUERIES`` or the seam (``chronocore.queries``) run
    statements; others may have unrelated methods of the same name (``self._run("initdb",
    ...)``).
    """
    found: dict[str, list[str]] = {}
    for path in sources():
        text = path.read_text(encoding="utf-8")
        if "QUERIES" not in text and "chronocore.queries import" not in text:
            continue
        known = known_names(path)
        for match in REFERENCE.finditer(text):
            name = match[1] or match[2] or match[3]
            line = text.count("\n", 0, match.start()) + 1
            where = f"{path.relative_to(ROOT)}:{line}"
            found.setdefault(name, []).append(where if name in known else f"{where} (unknown)")
    return found


def test_every_query_the_code_names_exists_in_queries_sql() -> None:
    referenced = referenced_query_names()
    # The scan itself works: it sees names used in the repository and the registry, in
    # a transaction, and through insert_by_hand.
    assert {"claim_due", "insert_task", "mark_finished", "heartbeat", "delete_job",
            "insert_retry"} <= set(referenced)
    missing = {name: where for name, where in referenced.items()
               if any(w.endswith("(unknown)") for w in where)}
    assert not missing, f"not defined in the queries.sql read there: {missing}"


def test_no_module_writes_sql_in_a_python_string() -> None:
    """Every statement has a name in a .sql file: none is a string literal, an f-string
    or a concatenation in the code (docstrings aside)."""
    found = []
    for path in sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value for v in node.values
                               if isinstance(v, ast.Constant) and isinstance(v.value, str))
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and id(node) not in docstrings):
                text = node.value
            else:
                continue
            if SQL_TEXT.match(text):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {text.strip()[:60]}")
    assert sources() and not found, "\n".join(found)


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
