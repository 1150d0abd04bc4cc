"""The database seam's fake (chronocore.testing) holds to the real statements, and a
claimed task crosses the wire to a worker unchanged."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chronocore.repository import ClaimedTask, JobRepository, TaskRepository
from chronocore.rpc import worker_pb2
from chronocore.testing import FakeQueries


def test_the_fake_refuses_a_statement_queries_sql_does_not_have() -> None:
    with pytest.raises(KeyError, match="claim_everything"):
        FakeQueries().all("claim_everything", limit=1)


def test_the_fake_refuses_parameters_the_statement_does_not_take() -> None:
    with pytest.raises(TypeError, match="requeue_stale_claims"):
        FakeQueries().all("requeue_stale_claims", lease=5.0)
    with pytest.raises(TypeError, match="release_claims"):
        FakeQueries().run("release_claims", ids=[1])  # tokens missing


def test_the_fake_answers_by_name_and_records_each_call_in_order() -> None:
    db = FakeQueries({"requeue_stale_claims": [{"id": 4}, {"id": 5}],
                      "next_due_in": lambda free_workers: [{"seconds": 2.0}]})
    repo = TaskRepository(db)
    assert repo.requeue_stale_claims(lease_s=5.0) == [4, 5]
    assert repo.next_due_in() == 2.0
    assert repo.prune_finished(retention_s=60.0, limit=10) == 0  # no answer: no rows
    assert [name for name, _ in db.calls] == [
        "requeue_stale_claims", "next_due_in", "prune_finished"]


def test_a_transaction_on_the_fake_runs_its_statements_on_the_same_fake() -> None:
    db = FakeQueries({"delete_job": [{"deleted": 1, "seen": 1}]})
    assert JobRepository(db).delete(1)
    assert db.transactions == 1
    assert [name for name, _ in db.calls] == ["hand_runs_one_at_a_time", "delete_job"]


@pytest.mark.parametrize("scheduled_at", [
    datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
    datetime(2026, 3, 1, 17, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
])
def test_a_claimed_task_survives_the_trip_to_the_worker(scheduled_at: datetime) -> None:
    sent = ClaimedTask(id=7, command="echo hi", token=uuid.uuid4(), timeout_s=2.5,
                       env={"A": "1"}, scheduled_at=scheduled_at)
    message = worker_pb2.Task.FromString(sent.to_message().SerializeToString())
    assert ClaimedTask.from_message(message) == sent


def test_a_claimed_task_without_a_timeout_arrives_without_one() -> None:
    sent = ClaimedTask(id=1, command="true", token=uuid.uuid4(), timeout_s=None, env={},
                       scheduled_at=datetime(2026, 3, 1, tzinfo=UTC))
    assert ClaimedTask.from_message(sent.to_message()).timeout_s is None


def test_a_malformed_task_message_is_refused() -> None:
    with pytest.raises(ValueError):
        ClaimedTask.from_message(worker_pb2.Task(id=1, command="true", claim_token="nope",
                                                 scheduled_at="2026-03-01T00:00:00Z"))
