"""The materializer's step over the fake database seam: what it plans from the jobs it
leased, and what it asks the database to write."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from chronocore.repository import JobRepository, Materialized
from chronocore.testing import FakeQueries
from chronosync_scheduler.materializer import Materializer

NOW = datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
MINUTE = datetime(2026, 3, 1, 12, 1, tzinfo=UTC)


def leased(job_id: int, *, cron: str = "* * * * *", next_run_at: datetime = MINUTE,
           misfire_policy: str = "run_once") -> dict[str, Any]:
    return {"id": job_id, "cron": cron, "timezone": "UTC", "next_run_at": next_run_at,
            "misfire_policy": misfire_policy, "starting_deadline_s": None,
            "max_catchup": 100, "lease_token": uuid.uuid4(), "now": NOW}


def written(jobs: list[dict[str, Any]]) -> FakeQueries:
    """A database that leases ``jobs`` and writes whatever it is asked to."""
    def make_occurrences(**p: Any) -> list[dict[str, Any]]:
        return [{"job_id": job_id, "tasks": [1000 * job_id + n for n in range(count)]}
                for job_id, count in zip(p["ids"], p["counts"], strict=True)]
    return FakeQueries({"lease_jobs_to_materialize": jobs,
                        "make_occurrences": make_occurrences})


def test_occurrences_within_the_horizon_are_written_for_every_leased_job_in_id_order() -> None:
    jobs = [leased(7), leased(3, cron="*/30 * * * * *")]  # every minute; every 30 s
    db = written(jobs)
    made = JobRepository(db).materialize(horizon_s=90)
    [write] = db.called("make_occurrences")
    assert write["ids"] == [3, 7]  # one lock order for every step
    assert write["tokens"] == [jobs[1]["lease_token"], jobs[0]["lease_token"]]
    # Made up to now + 90 s (12:01:30.5): job 3 at 12:01:00 and 12:01:30, job 7 at 12:01.
    half = MINUTE + timedelta(seconds=30)
    assert write["occurrences"] == [MINUTE, half, MINUTE]
    assert (write["firsts"], write["counts"]) == ([1, 3], [2, 1])  # 1-based slices
    assert write["next_run_ats"] == [MINUTE + timedelta(minutes=1)] * 2
    assert [(m.job_id, len(m.tasks)) for m in made] == [(3, 2), (7, 1)]


def test_a_job_missed_for_an_hour_gets_one_catch_up_run_and_the_rest_counted_skipped() -> None:
    db = written([leased(1, next_run_at=MINUTE - timedelta(hours=1))])  # from 11:01
    [made] = JobRepository(db).materialize(horizon_s=1)
    [write] = db.called("make_occurrences")
    # 11:01 to 11:59 were missed: the latest runs, 58 are skipped; 12:00, found half a
    # second late, is on time.
    assert write["occurrences"] == [MINUTE - timedelta(minutes=2), MINUTE - timedelta(minutes=1)]
    assert write["skipped"] == [58]
    assert made.skipped == 58


def test_with_no_job_due_the_step_writes_nothing() -> None:
    db = FakeQueries()
    assert JobRepository(db).materialize(horizon_s=5) == []
    assert [name for name, _ in db.calls] == ["lease_jobs_to_materialize"]


def test_a_job_whose_lease_was_taken_over_meanwhile_is_not_reported_made() -> None:
    db = FakeQueries({"lease_jobs_to_materialize": [leased(1), leased(2)],
                      "make_occurrences": [{"job_id": 2, "tasks": [20]}]})
    assert JobRepository(db).materialize(horizon_s=5) == [
        Materialized(job_id=2, tasks=[20], skipped=0)]


def test_a_materializer_step_then_applies_the_concurrency_policies() -> None:
    db = written([leased(1)])
    Materializer(jobs=JobRepository(db), registry=None,  # type: ignore[arg-type]
                 horizon_s=90, tls=None).run_once()
    assert [name for name, _ in db.calls] == [
        "lease_jobs_to_materialize", "make_occurrences", "skip_forbidden", "replace_running"]
