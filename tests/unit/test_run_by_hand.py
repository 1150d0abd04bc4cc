"""Runs made by hand (a retry, a job's run now): what a retry's body may hold, which
instants such a run may take, and which tasks count as finished."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any

import pytest
from rejection import assert_rejected_by

from chronocore.model import parse_retry
from chronocore.repository import HAND_INSTANT_TRIES, RunRefused, hand_instants, refuse_unfinished

NOW = datetime(2026, 12, 25, 17, 4, 0, 250_000, tzinfo=UTC)
US = timedelta(microseconds=1)


def test_a_retry_takes_no_body_an_empty_one_or_an_idempotency_key() -> None:
    assert parse_retry(None) is None
    assert parse_retry({}) is None
    assert parse_retry({"idempotency_key": "retry-17"}) == "retry-17"


@pytest.mark.parametrize(("body", "field"), [
    ([], None), ("retry", None), (17, None),
    ({"command": "rm -rf /"}, "command"), ({"env": {}}, "env"),
    ({"idempotency_key": ""}, "idempotency_key"), ({"idempotency_key": 5}, "idempotency_key"),
    ({"idempotency_key": "k" * 201}, "idempotency_key"),
    ({"idempotency_key": "a\x00b"}, "idempotency_key"),
])
def test_a_retry_body_with_anything_else_is_refused_naming_the_field(
    body: Any, field: str | None
) -> None:
    assert_rejected_by(lambda: parse_retry(body), field, given=body)


def test_a_run_by_hand_is_due_at_the_database_now_when_that_is_off_the_second() -> None:
    assert next(hand_instants(NOW)) == NOW


def test_a_run_by_hand_never_takes_a_whole_second_where_cron_ticks_fall() -> None:
    on_the_second = NOW.replace(microsecond=0)
    assert next(hand_instants(on_the_second)) == on_the_second + US
    before_the_second = NOW.replace(microsecond=999_999)
    tried = list(islice(hand_instants(before_the_second), 3))
    assert tried == [before_the_second, before_the_second + 2 * US, before_the_second + 3 * US]
    assert all(at.microsecond for at in islice(hand_instants(on_the_second), HAND_INSTANT_TRIES))


def test_the_instants_tried_for_a_run_by_hand_are_bounded() -> None:
    instants = hand_instants(NOW)
    assert len(list(islice(instants, HAND_INSTANT_TRIES))) == HAND_INSTANT_TRIES
    with pytest.raises(RuntimeError, match="no free instant"):
        next(instants)


def task(status: str, **times: Any) -> dict[str, Any]:
    row = {"id": 17, "status": status, "started_at": None, "completed_at": None,
           "failed_at": None}
    return {**row, **times}


@pytest.mark.parametrize("row", [
    task("succeeded", started_at=NOW, completed_at=NOW),
    task("failed", started_at=NOW, failed_at=NOW),
    task("failed", failed_at=NOW),  # refused by the worker, never started
    task("cancelled"),  # before it started
    task("cancelled", started_at=NOW, failed_at=NOW),  # its run recorded as ended
])
def test_a_finished_task_may_be_retried(row: dict[str, Any]) -> None:
    refuse_unfinished(row)


@pytest.mark.parametrize(("row", "why"), [
    (task("scheduled"), "is scheduled"), (task("picked"), "is picked"),
    (task("running", started_at=NOW), "is running"), (task("retrying"), "is retrying"),
    (task("cancelled", started_at=NOW), "still stopping"),
])
def test_a_task_not_finished_is_not_retried(row: dict[str, Any], why: str) -> None:
    with pytest.raises(RunRefused, match=why):
        refuse_unfinished(row)
