"""A task's status is derived in one place, the SQL function ``task_status``; these tests
pin its precedence for every combination of timestamps (and of "an attempt was made"),
and check that listing by status (``TaskRepository.list``) uses the same derivation."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from chronocore.queries import QUERIES
from chronocore.repository import TaskRepository

COLUMNS = ("picked_at", "started_at", "completed_at", "failed_at", "cancelled_at")

# The documented precedence: the first timestamp set in this order decides the status.
PRECEDENCE = (
    ("completed_at", "succeeded"),
    ("cancelled_at", "cancelled"),
    ("failed_at", "failed"),
    ("started_at", "running"),
    ("picked_at", "picked"),
)
STATUSES = ("scheduled", "picked", "running", "retrying", "failed", "cancelled",
            "succeeded")
# Not a timestamp: whether an attempt was made. Waiting after one is "retrying".
RETRIED = "attempted"


def expected_status(is_set: dict[str, bool]) -> str:
    for column, status in PRECEDENCE:
        if is_set[column]:
            return status
    return "retrying" if is_set[RETRIED] else "scheduled"


COMBINATIONS = [
    dict(zip((*COLUMNS, RETRIED), flags, strict=True))
    for flags in itertools.product((False, True), repeat=len(COLUMNS) + 1)
]


def describe(is_set: dict[str, bool]) -> str:
    return "+".join(c.removesuffix("_at") for c, on in is_set.items() if on) or "none"


def row_params(is_set: dict[str, bool], now: datetime) -> dict[str, Any]:
    return {**{c: (now if is_set[c] else None) for c in COLUMNS},
            "attempt": 1 if is_set[RETRIED] else 0}


def db_now(conn: psycopg.Connection[dict[str, Any]]) -> datetime:
    row = conn.execute("SELECT now() AS now").fetchone()
    assert row is not None
    return row["now"]


def test_expected_statuses_follow_the_documented_rule() -> None:
    """Spot checks of the rule itself, so a slip in PRECEDENCE cannot go unnoticed."""
    none = dict.fromkeys((*COLUMNS, RETRIED), False)
    assert len(COMBINATIONS) == 64
    assert expected_status(none) == "scheduled"
    assert expected_status({**none, RETRIED: True}) == "retrying"
    assert expected_status({**none, RETRIED: True, "picked_at": True}) == "picked"
    assert expected_status({**none, "picked_at": True}) == "picked"
    assert expected_status({**none, "picked_at": True, "started_at": True}) == "running"
    assert expected_status({**none, "started_at": True, "failed_at": True}) == "failed"
    assert expected_status({**none, "failed_at": True, "cancelled_at": True}) == "cancelled"
    assert expected_status({**none, "completed_at": True, "cancelled_at": True}) == "succeeded"
    assert expected_status(dict.fromkeys((*COLUMNS, RETRIED), True)) == "succeeded"


def test_task_status_function_follows_the_precedence_for_all_64_combinations(
    dsn: str,
) -> None:
    wrong = []
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        now = db_now(conn)
        for is_set in COMBINATIONS:
            got = conn.execute(QUERIES["task_status_of"], row_params(is_set, now)).fetchone()
            assert got is not None
            want = expected_status(is_set)
            if got["status"] != want:
                wrong.append(f"{describe(is_set)}: got {got['status']!r}, want {want!r}")
    assert not wrong, "task_status disagrees with the documented precedence:\n" + "\n".join(
        wrong
    )


def test_listing_by_status_agrees_with_the_derivation(dsn: str, repo: TaskRepository) -> None:
    # One task per combination: 64 rows covering all seven statuses.
    expected: dict[int, str] = {}
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        now = db_now(conn)
        for is_set in COMBINATIONS:
            row: dict[str, Any] | None = conn.execute(
                "INSERT INTO tasks (command, scheduled_at, picked_at, started_at,"
                " completed_at, failed_at, cancelled_at, attempt)"
                " VALUES ('true', now(), %(picked_at)s, %(started_at)s, %(completed_at)s,"
                " %(failed_at)s, %(cancelled_at)s, %(attempt)s) RETURNING id",
                row_params(is_set, now),
            ).fetchone()
            assert row is not None
            expected[row["id"]] = expected_status(is_set)
    assert set(expected.values()) == set(STATUSES)

    everything = repo.list(status=None, job_id=None, before=None, limit=100)
    assert len(everything) == len(COMBINATIONS)
    assert {r.id: r.status for r in everything} == expected
    for status in STATUSES:
        rows = repo.list(status=status, job_id=None, before=None, limit=100)
        want = sorted((i for i, s in expected.items() if s == status), reverse=True)
        assert [r.id for r in rows] == want, f"list(status={status!r})"
        assert {r.status for r in rows} == {status}
    assert repo.list(status="no-such-status", job_id=None, before=None, limit=100) == []
    for task_id, status in expected.items():
        found = repo.get(task_id)
        assert found is not None
        assert found[0].status == status, f"get({task_id})"
