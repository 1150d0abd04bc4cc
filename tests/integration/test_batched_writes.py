"""A worker records starts and outcomes many at a time (``mark_started`` and
``mark_finished`` take a batch; ``GroupCommit`` gathers it from the slots' threads). One
statement must still treat every task by its own rules: its own fencing token, its own
delivery guarantee and retry budget, its own output."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import psycopg
from harness import query, wait_for

from chronocore.groupcommit import GroupCommit
from chronocore.queries import QUERIES
from chronocore.repository import ClaimedTask, Outcome, Started, TaskRepository

WORKER = "worker-test"


def claim(dsn: str, repo: TaskRepository, rows: list[tuple[str, str, int]]) -> list[ClaimedTask]:
    """Insert due tasks (command, delivery, max_attempts) and claim them all, in order."""
    for command, delivery, max_attempts in rows:
        query(dsn, "INSERT INTO tasks (command, scheduled_at, delivery, max_attempts) "
                   "VALUES (%s, now() - interval '1 second', %s, %s)",
              (command, delivery, max_attempts))
    claimed = repo.claim_due(coordinator_id="coordinator-test", limit=len(rows) + 1)
    assert len(claimed) == len(rows)
    return sorted(claimed, key=lambda t: t.id)


def steal(dsn: str, task: ClaimedTask) -> None:
    """Another coordinator re-claimed the task (ours was recovered): a new token."""
    query(dsn, "UPDATE tasks SET claim_token = gen_random_uuid() WHERE id = %s", (task.id,))


def task_row(dsn: str, task: ClaimedTask) -> dict:
    return query(dsn, "SELECT *, task_status(picked_at, started_at, completed_at, "
                      "failed_at, cancelled_at, attempt) AS status, due_at > now() AS later "
                      "FROM tasks WHERE id = %s", (task.id,))[0]


def test_one_start_statement_fences_each_task_by_its_own_token(
        dsn: str, repo: TaskRepository) -> None:
    plain = [("true", "at_most_once", 1)] * 5
    mine, cancelled, stolen, already, also_mine = claim(dsn, repo, plain)
    assert repo.cancel(cancelled.id) is not None
    steal(dsn, stolen)
    assert repo.mark_started([already], worker_id=WORKER).keys() == {already.id}

    started = repo.mark_started([also_mine, stolen, mine, cancelled, already],
                                worker_id=WORKER)

    assert started.keys() == {mine.id, also_mine.id}
    assert all(s.attempt == 1 for s in started.values())
    attempts = query(dsn, "SELECT task_id, count(*) AS n, min(started_at) AS at "
                          "FROM task_attempts GROUP BY task_id")
    assert {a["task_id"]: a["n"] for a in attempts} == {mine.id: 1, also_mine.id: 1,
                                                       already.id: 1}
    assert task_row(dsn, stolen)["started_at"] is None
    assert task_row(dsn, cancelled)["status"] == "cancelled"
    assert task_row(dsn, already)["attempt"] == 1, "a started task is never started again"
    assert task_row(dsn, mine)["started_at"] == task_row(dsn, also_mine)["started_at"], \
        "one statement, one start instant"


def test_one_outcome_statement_applies_each_tasks_own_rules(
        dsn: str, repo: TaskRepository) -> None:
    ok, failed, retried, exhausted, stolen, chatty = claim(dsn, repo, [
        ("true", "at_most_once", 1), ("exit 3", "at_most_once", 1),
        ("exit 4", "at_least_once", 3), ("exit 5", "at_least_once", 1),
        ("true", "at_most_once", 1), ("echo", "at_most_once", 1)])
    tasks = [ok, failed, retried, exhausted, stolen, chatty]
    assert repo.mark_started(tasks, worker_id=WORKER).keys() == {t.id for t in tasks}
    steal(dsn, stolen)
    output = "quotes ' \" \\, a comma, {braces}, NULL, ünïcödé\n" * 1000

    def exited(code: int, text: str = "") -> Outcome:
        return Outcome(succeeded=code == 0, exit_code=code,
                       error=None if code == 0 else f"exit {code}", output=text)

    written = repo.mark_finished([(chatty, exited(0, output)), (ok, exited(0)),
                                  (failed, exited(3)), (retried, exited(4)),
                                  (exhausted, exited(5)), (stolen, exited(0))])

    assert written == {ok.id, failed.id, retried.id, exhausted.id, chatty.id}
    assert task_row(dsn, ok)["status"] == "succeeded"
    assert (task_row(dsn, failed)["status"], task_row(dsn, failed)["exit_code"]) == ("failed", 3)
    back = task_row(dsn, retried)
    assert (back["status"], back["claim_token"], back["later"]) == ("retrying", None, True), \
        "a failed at_least_once attempt with attempts left goes back after a backoff"
    assert task_row(dsn, exhausted)["status"] == "failed"
    assert task_row(dsn, stolen)["status"] == "running", "a fenced outcome changes nothing"
    assert task_row(dsn, chatty)["output"] == output
    attempts = {a["task_id"]: a for a in query(dsn, "SELECT * FROM task_attempts")}
    assert {i for i, a in attempts.items() if a["finished_at"] is not None} == written
    assert attempts[retried.id]["exit_code"] == 4


def test_slots_starting_at_once_share_statements_and_each_get_their_own_answer(
        dsn: str, repo: TaskRepository) -> None:
    tasks = claim(dsn, repo, [("true", "at_most_once", 1)] * 40)
    fenced = {t.id for t in tasks[3::7]}
    for task in tasks[3::7]:
        steal(dsn, task)
    first_held = threading.Event()
    release = threading.Event()

    def write(batch: list[ClaimedTask]) -> list[Started | None]:
        if not first_held.is_set():  # hold the first batch until all others queue up
            first_held.set()
            assert release.wait(30)
        started = repo.mark_started(batch, worker_id=WORKER)
        return [started.get(t.id) for t in batch]

    starts: GroupCommit[ClaimedTask, Started | None] = GroupCommit(write, name="starts")
    starts.start()
    with ThreadPoolExecutor(len(tasks)) as threads:
        first = threads.submit(starts.submit, tasks[0])
        wait_for(first_held.is_set, timeout=10, what="the first batch")
        rest = [threads.submit(starts.submit, t) for t in tasks[1:]]
        wait_for(lambda: starts.pending == len(tasks) - 1, timeout=10,
                 what="the other slots to queue up")
        release.set()
        answers = dict(zip((t.id for t in tasks),
                           [first.result(), *(f.result() for f in rest)], strict=True))
    starts.stop()

    assert {i for i, a in answers.items() if a is None} == fenced
    assert all(a.attempt == 1 for a in answers.values() if a is not None)
    statements = query(dsn, "SELECT count(DISTINCT started_at) AS n FROM tasks "
                            "WHERE started_at IS NOT NULL")[0]["n"]
    assert statements == 2, "the first start, then every queued one in one statement"


def join_filter_removals(plan: dict) -> int:
    """Rows a plan compared and threw away in join filters, over all its nodes."""
    return plan.get("Rows Removed by Join Filter", 0) + sum(
        join_filter_removals(child) for child in plan.get("Plans", []))


def test_batch_statements_probe_each_task_even_with_statistics_older_than_the_burst(
        dsn: str, repo: TaskRepository) -> None:
    """Statistics taken before a burst of new tasks say almost no task is waiting; a
    plain join of the batch with ``tasks`` then compared every waiting task with every id
    (a batch of 50 over 3,000 waiting tasks: 150,000 comparisons, tens of milliseconds,
    each time). Each id must be found by its own index probe instead."""
    query(dsn, "ANALYZE tasks")  # taken while no task waits
    query(dsn, "INSERT INTO tasks (command, scheduled_at) "
               "SELECT 'true', now() - interval '1 second' FROM generate_series(1, 3000)")
    claimed = sorted(repo.claim_due(coordinator_id="coordinator-test", limit=3000),
                     key=lambda t: t.id)
    starting, releasing = claimed[:50], claimed[50:100]

    def explain(name: str, params: dict) -> dict:
        with psycopg.connect(dsn, autocommit=True) as conn, \
                conn.transaction(force_rollback=True):  # explaining changes nothing
            return conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {QUERIES[name]}",
                                params).fetchone()[0][0]["Plan"]

    ids, tokens = [t.id for t in starting], [t.token for t in starting]
    start_plan = explain("mark_started", {"ids": ids, "tokens": tokens, "worker_id": WORKER})
    release_plan = explain("release_claims", {"ids": [t.id for t in releasing],
                                              "tokens": [t.token for t in releasing]})
    assert repo.mark_started(starting, worker_id=WORKER).keys() == set(ids)
    finish_plan = explain("mark_finished", {
        "ids": ids, "tokens": tokens, "succeeded": [True] * 50, "exit_codes": [0] * 50,
        "errors": [None] * 50, "outputs": [""] * 50, "backoff_base_s": 1.0,
        "backoff_max_s": 10.0})
    for name, plan in (("mark_started", start_plan), ("mark_finished", finish_plan),
                       ("release_claims", release_plan)):
        assert join_filter_removals(plan) < 50, f"{name} compares the batch with every task"
    assert query(dsn, "SELECT count(*) AS n FROM tasks WHERE completed_at IS NOT NULL"
                      )[0]["n"] == 0, "EXPLAIN ANALYZE ran inside a rolled-back transaction"


def test_a_start_and_its_confirmation_are_signs_of_life_and_say_who_owns_the_attempt(
        dsn: str, repo: TaskRepository) -> None:
    query(dsn, "INSERT INTO nodes (id, kind, host, pid, address, capacity, last_heartbeat_at)"
               " VALUES (%s, 'worker', 'test', 1, 'nowhere:1', 4, now() - interval '1 hour')",
          (WORKER,))

    def heartbeat_age() -> float:
        return query(dsn, "SELECT EXTRACT(EPOCH FROM now() - last_heartbeat_at)::float8 AS s"
                          " FROM nodes WHERE id = %s", (WORKER,))[0]["s"]

    ours, cancelled, stolen = claim(dsn, repo, [("true", "at_least_once", 3)] * 3)
    assert repo.mark_started([ours, cancelled, stolen], worker_id=WORKER).keys() == {
        ours.id, cancelled.id, stolen.id}
    assert heartbeat_age() < 60, "a start moves the worker's heartbeat"
    query(dsn, "UPDATE nodes SET last_heartbeat_at = now() - interval '1 hour'")
    assert repo.cancel(cancelled.id) is not None
    steal(dsn, stolen)

    assert repo.confirm_start(ours, worker_id=WORKER) is None
    assert heartbeat_age() < 60, "a confirmation moves the worker's heartbeat"
    assert repo.confirm_start(cancelled, worker_id=WORKER) == "cancelled"
    assert repo.confirm_start(stolen, worker_id=WORKER) == "worker_lost"
    assert repo.confirm_start(ours, worker_id="another-worker") == "worker_lost"
