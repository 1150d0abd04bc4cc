"""Materialization (``JobRepository.materialize``: ``plan`` inside a transaction over jobs
locked ``FOR UPDATE SKIP LOCKED``, inserting ``ON CONFLICT (job_id, scheduled_at) DO
NOTHING``) under real contention: threads and OS processes racing over per-second jobs
leave every occurrence exactly one task, with no gaps; and occurrences planned in
overlapping pieces, out of order and twice, are still each one task.

A real database, no service processes."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from harness import launch_until_ready, query
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import ConnectionPool

from chronocore.cron import Schedule, parse_schedule
from chronocore.db import open_pool
from chronocore.jobs import MAX_CATCHUP_LIMIT, parse_job, plan
from chronocore.queries import QUERIES
from chronocore.repository import JobRepository

JOBS = 4
PROCESSES = 3
THREADS = 4
RACE_S = 3.0
HORIZON_S = 2.0
LIMIT = 2  # jobs per step: racers share the jobs rather than one taking all
SECOND = timedelta(seconds=1)

# One racing process: connect, say "ready", wait for "go", then materialize in a loop
# for race_s seconds, writing "job_id task_id" for every task it made.
RACER = """\
import sys, time
from pathlib import Path

from chronocore.db import open_pool
from chronocore.repository import JobRepository

dsn, name, ready, go, out = sys.argv[1:6]
race_s, horizon_s, limit = float(sys.argv[6]), float(sys.argv[7]), int(sys.argv[8])
pool = open_pool(dsn, size=1, name=name)
try:
    pool.wait(timeout=30)
    repo = JobRepository(pool)
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit(f"{name}: no go signal within 60s")
        time.sleep(0.001)
    stop = time.monotonic() + race_s
    with open(out, "w") as f:
        while time.monotonic() < stop:
            for made in repo.materialize(horizon_s=horizon_s, limit=limit):
                f.writelines(f"{made.job_id} {t}\\n" for t in made.tasks)
            f.flush()
finally:
    pool.close()
"""


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    pool = open_pool(dsn, size=THREADS + 1, name="test-materialize")
    pool.wait(timeout=30)
    try:
        yield pool
    finally:
        pool.close()


def per_second_job(repo: JobRepository, name: str) -> int:
    """A per-second job that keeps every missed occurrence (a stalled racer leaves no
    gap by policy, so any gap is a bug)."""
    job_id, created = repo.create(parse_job({
        "command": "true", "cron": "* * * * * *", "name": name,
        "misfire_policy": "run_all", "max_catchup": MAX_CATCHUP_LIMIT,
    }))
    assert created
    return job_id


def assert_no_duplicate_occurrences(dsn: str) -> None:
    duplicates = query(
        dsn,
        "SELECT job_id, scheduled_at, count(*) AS n FROM tasks"
        " GROUP BY job_id, scheduled_at HAVING count(*) > 1 ORDER BY job_id, scheduled_at",
    )
    assert duplicates == [], f"occurrences made more than once: {duplicates[:10]}"


def test_racing_threads_and_processes_make_every_second_exactly_one_task(
    dsn: str, pool: ConnectionPool, tmp_path: Path
) -> None:
    repo = JobRepository(pool)
    job_ids = [per_second_job(repo, f"tick-{i}") for i in range(JOBS)]
    first_runs = {r["id"]: r["next_run_at"] for r in query(
        dsn, "SELECT id, next_run_at FROM jobs")}

    script = tmp_path / "racer.py"
    script.write_text(RACER)
    go = tmp_path / "go"
    names = [f"racer-{i}" for i in range(PROCESSES)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    made_by: dict[str, list[tuple[int, int]]] = {f"thread-{i}": [] for i in range(THREADS)}
    errors: list[BaseException] = []
    start_threads = threading.Event()

    def race_in_thread(name: str) -> None:
        try:
            start_threads.wait()
            stop = time.monotonic() + RACE_S
            while time.monotonic() < stop:
                for made in repo.materialize(horizon_s=HORIZON_S, limit=LIMIT):
                    made_by[name] += [(made.job_id, t) for t in made.tasks]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=race_in_thread, args=(name,)) for name in made_by]
    try:
        launch_until_ready(procs, {
            name: [str(script), dsn, name, str(tmp_path / f"{name}.ready"), str(go),
                   str(tmp_path / f"{name}.out"), str(RACE_S), str(HORIZON_S), str(LIMIT)]
            for name in names
        }, lambda name: tmp_path / f"{name}.ready", what="the racing processes to connect")
        for thread in threads:
            thread.start()
        go.touch()
        start_threads.set()
        for thread in threads:
            thread.join(timeout=RACE_S + 60)
            assert not thread.is_alive(), "a racing thread did not finish"
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"{name} failed: {err.decode()}"
    finally:
        start_threads.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not errors, f"a racing thread failed: {errors[0]!r}"

    for name in names:
        made_by[name] = [
            (int(job), int(task))
            for job, task in (line.split() for line in
                              (tmp_path / f"{name}.out").read_text().splitlines())
        ]
    racers_that_made = [name for name, made in made_by.items() if made]
    assert len(racers_that_made) >= 2, (
        f"only {racers_that_made} made tasks: the race did not happen"
    )

    # One more step, alone, brings every job up to now + horizon.
    made_by["final"] = [(m.job_id, t) for m in repo.materialize(horizon_s=HORIZON_S)
                        for t in m.tasks]
    after_final = repo.database_now()

    assert_no_duplicate_occurrences(dsn)
    reported = [task for made in made_by.values() for _, task in made]
    assert len(reported) == len(set(reported)), "a task was reported made twice"
    rows = query(dsn, "SELECT id, job_id, scheduled_at FROM tasks ORDER BY job_id,"
                      " scheduled_at")
    assert {r["id"] for r in rows} == set(reported), (
        "the tasks made are not the ones the racers were told they made"
    )
    assert all((job, task) in {(r["job_id"], r["id"]) for r in rows}
               for made in made_by.values() for job, task in made)

    jobs = {r["id"]: r for r in query(dsn, "SELECT id, next_run_at FROM jobs")}
    for job_id in job_ids:
        seconds = [r["scheduled_at"] for r in rows if r["job_id"] == job_id]
        assert seconds, f"job {job_id} made nothing"
        gaps = [(a, b) for a, b in pairwise(seconds) if b - a != SECOND]
        assert not gaps, f"job {job_id} has gaps (or repeats) between occurrences: {gaps[:5]}"
        assert seconds[0] == first_runs[job_id], "the first occurrence was not made"
        assert jobs[job_id]["next_run_at"] == seconds[-1] + SECOND, (
            "next_run_at is not the occurrence right after the last one made"
        )
        assert seconds[-1] >= after_final, "the job is not made up to now"
        assert seconds[-1] - seconds[0] >= timedelta(seconds=RACE_S), (
            "the race did not cover the seconds it ran for"
        )


def test_overlapping_inserts_racing_without_a_job_lock_make_each_occurrence_once(
    dsn: str, pool: ConnectionPool
) -> None:
    # The unique key alone, without the SKIP LOCKED of materialize: every thread inserts
    # its own overlapping slice of the same 600 seconds at the same moment.
    job_id = per_second_job(JobRepository(pool), "overlap")
    base = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    occurrences = [base + s * SECOND for s in range(600)]
    slices = [occurrences[i * 100:i * 100 + 300] for i in range(THREADS)] + [occurrences]
    barrier = threading.Barrier(len(slices))
    inserted: list[list[int]] = [[] for _ in slices]
    errors: list[BaseException] = []

    def insert(i: int) -> None:
        try:
            with pool.connection() as conn:
                barrier.wait(timeout=30)
                inserted[i] = [r["id"] for r in conn.execute(
                    QUERIES["insert_occurrences"],
                    {"job_ids": [job_id] * len(slices[i]),
                     "occurrences": slices[i], "ttl_s": 5.0}).fetchall()]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=insert, args=(i,)) for i in range(len(slices))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, f"an insert failed: {errors[0]!r}"
    assert_no_duplicate_occurrences(dsn)
    made = [r["scheduled_at"] for r in query(
        dsn, "SELECT scheduled_at FROM tasks WHERE job_id = %s ORDER BY scheduled_at",
        (job_id,))]
    assert made == occurrences
    ids = [task for got in inserted for task in got]
    assert len(ids) == len(set(ids)) == len(occurrences), (
        "each occurrence must be reported inserted by exactly one of the racers"
    )


# --- any window, planned in overlapping pieces, out of order and twice ----------------------

# Zones and expressions whose occurrences do not depend on where iteration starts (the
# known daylight-saving bugs of fixed-time expressions and of Lord Howe's half-hour shift
# are covered by tests/unit/test_cron.py); this test is about the unique key.
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
EXPRESSIONS = ["* * * * * *", "*/7 * * * * *", "*/20 * * * * *", "0 * * * * *",
               "* * * * *", "*/5 * * * *", "0 * * * *", "0 */3 * * * *", "30 * * * * *",
               "*/15 * 9-17 * * *", "* * * * MON-FRI", "@hourly"]
MAX_OCCURRENCES = 200


def window(schedule: Schedule, start: datetime, end: datetime) -> list[datetime]:
    """The occurrences in (start, end], in one pass, at most MAX_OCCURRENCES."""
    found = []
    for occurrence in schedule.after(start):
        if occurrence > end or len(found) == MAX_OCCURRENCES:
            break
        found.append(occurrence)
    return found


@st.composite
def pieces_in_any_order(draw: st.DrawFn) -> tuple[list[float], list[float], list[int]]:
    """Cut points (fractions of the window), how far back each piece reaches into the
    one before (fractions of the window), and the order pieces are inserted in: a
    permutation with some pieces repeated."""
    cuts = sorted(draw(st.lists(st.floats(0.001, 0.999), max_size=8)))
    overlaps = draw(st.lists(st.floats(0, 0.5), min_size=len(cuts) + 1,
                             max_size=len(cuts) + 1))
    order = draw(st.permutations(range(len(cuts) + 1)))
    again = draw(st.lists(st.integers(0, len(cuts)), max_size=4))
    return cuts, overlaps, [*order, *again]


# The pool's own thread draws from the global random (jitter for a new connection's
# lifetime); Hypothesis takes that for the strategy's doing when it happens mid-draw.
@pytest.mark.filterwarnings(
    "ignore:Do not use the `random` module inside strategies"
    ":hypothesis.errors.HypothesisDeprecationWarning")
@settings(database=None, deadline=None, max_examples=25,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    expression=st.sampled_from(EXPRESSIONS),
    zone=st.sampled_from(ZONES),
    start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 31),
                       timezones=st.just(UTC)),
    length_s=st.integers(1, 6 * 3600),
    pieces=pieces_in_any_order(),
)
def test_a_window_planned_in_overlapping_pieces_in_any_order_is_each_occurrence_once(
    pool: ConnectionPool, expression: str, zone: str, start: datetime, length_s: int,
    pieces: tuple[list[float], list[float], list[int]],
) -> None:
    # Each example has its own job, so examples sharing the database do not interfere.
    repo = JobRepository(pool)
    job_id, _ = repo.create(parse_job({"command": "true", "cron": expression,
                                       "timezone": zone, "paused": True}))
    schedule = parse_schedule(expression, zone, now=start)
    end = start + timedelta(seconds=length_s)
    expected = window(schedule, start, end)
    if len(expected) == MAX_OCCURRENCES:
        end = expected[-1]
    cuts, overlaps, order = pieces
    bounds = [start, *(start + (end - start) * c for c in cuts), end]

    def piece(i: int) -> list[datetime]:
        """plan() for piece i: from the first occurrence after its start (pulled back
        into the pieces before, not before the window) up to its end, caught up with
        run_all."""
        since = max(start, bounds[i] - (end - start) * overlaps[i])
        step = plan(schedule=schedule, next_run_at=next(schedule.after(since)),
                    now=bounds[i + 1], horizon=timedelta(0), misfire_policy="run_all",
                    starting_deadline_s=None, max_catchup=MAX_CATCHUP_LIMIT)
        return step.occurrences

    inserted = 0
    with pool.connection() as conn:
        for i in order:
            occurrences = piece(i)
            if occurrences:
                inserted += len(conn.execute(
                    QUERIES["insert_occurrences"],
                    {"job_ids": [job_id] * len(occurrences),
                     "occurrences": occurrences, "ttl_s": 5.0}).fetchall())
        made = [r["scheduled_at"] for r in conn.execute(
            "SELECT scheduled_at FROM tasks WHERE job_id = %s ORDER BY scheduled_at",
            (job_id,)).fetchall()]
        duplicates = conn.execute(
            "SELECT scheduled_at FROM tasks WHERE job_id = %s GROUP BY scheduled_at"
            " HAVING count(*) > 1", (job_id,)).fetchall()
    assert duplicates == []
    assert made == expected
    assert inserted == len(expected), "RETURNING must report only the rows inserted"
