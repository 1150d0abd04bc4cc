"""The deliveries' rows, driven through WebhookRepository on a real database: written with
the event, taken by one deliverer at a time, and a result written only by the attempt
that still holds its row."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness import query, wait_for
from psycopg.types.json import Jsonb

from chronocore.db import open_pool
from chronocore.webhooks import Result, WebhookRepository, delivery_resource

HOOK = {"url": "http://127.0.0.1:9/hooks/x", "events": ["succeeded", "failed"],
        "secret": "a-secret-of-16-chars"}


@pytest.fixture
def hooks(dsn: str) -> Iterator[WebhookRepository]:
    pool = open_pool(dsn, size=2, name="test-hooks")
    try:
        yield WebhookRepository(pool)
    finally:
        pool.close()


def finished_task(dsn: str, column: str) -> int:
    task_id = query(dsn, "INSERT INTO tasks (command, scheduled_at, webhooks)"
                         " VALUES ('true', now(), %s)"
                         " RETURNING id", (Jsonb([HOOK]),))[0]["id"]
    query(dsn, f"UPDATE tasks SET picked_at = now(), started_at = now(), {column} = now()"
               " WHERE id = %s", (task_id,))
    return task_id


def test_the_event_s_own_statement_writes_its_delivery(
    dsn: str, hooks: WebhookRepository
) -> None:
    succeeded, failed = finished_task(dsn, "completed_at"), finished_task(dsn, "failed_at")
    assert [d.event for d in hooks.for_task(succeeded)] == ["succeeded"]
    assert [d.event for d in hooks.for_task(failed)] == ["failed"]
    row = query(dsn, "SELECT payload FROM webhook_deliveries WHERE task_id = %s",
                (succeeded,))[0]
    assert row["payload"]["status"] == "succeeded" and "webhooks" not in row["payload"]


def test_a_result_is_written_only_by_the_attempt_holding_the_delivery(
    dsn: str, hooks: WebhookRepository
) -> None:
    task_id = finished_task(dsn, "completed_at")
    [first] = hooks.claim(owner="a", limit=10, lease_s=0.2)
    assert first.attempts == 1
    assert hooks.claim(owner="b", limit=10, lease_s=30) == []  # held by a's lease

    # a's lease runs out (a froze, or died): b takes the delivery over.
    second = wait_for(lambda: hooks.claim(owner="b", limit=10, lease_s=30), timeout=10,
                      what="a's lease to end")[0]
    assert second.id == first.id and second.attempts == 2

    # a comes back late with a success: it writes nothing over b's attempt.
    assert hooks.finish(first, Result(delivered=True, status=200, error=None),
                        owner="a") is None
    assert hooks.finish(second, Result(delivered=False, status=503, error="HTTP 503"),
                        owner="b") == "pending"
    [shown] = [delivery_resource(d) for d in hooks.for_task(task_id)]
    assert (shown["state"], shown["attempts"], shown["last_status"]) == ("pending", 2, 503)
    assert shown["next_attempt_at"] is not None
