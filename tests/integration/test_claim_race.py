"""The claim (``TaskRepository.claim_due``, one ``FOR UPDATE SKIP LOCKED`` statement) under
real contention: two OS processes racing over the same due tasks, and what a claim must
never hand out (tasks not yet due by the database clock, cancelled or finished ones)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from harness import launch_until_ready, query, wait_for

from chronocore.repository import TaskRepository

TASKS = 5_000
BATCH = 50
EMPTY_CLAIMS_TO_STOP = 5

# One claimer process: connect, say "ready", wait for "go", then claim until the queue
# stays empty, appending "id token" lines to its output file after every batch.
CLAIMER = """\
import sys, time
from pathlib import Path

from chronocore.db import open_pool
from chronocore.repository import TaskRepository

dsn, name, ready, go, out = sys.argv[1:6]
batch, empty_to_stop = int(sys.argv[6]), int(sys.argv[7])
pool = open_pool(dsn, size=2, name=name)
try:
    pool.wait(timeout=30)
    repo = TaskRepository(pool)
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            sys.exit(f"{name}: no go signal within 60s")
        time.sleep(0.001)
    empty = 0
    with open(out, "w") as f:
        while empty < empty_to_stop:
            claimed = repo.claim_due(coordinator_id=name, limit=batch)
            if claimed:
                empty = 0
                f.writelines(f"{t.id} {t.token}\\n" for t in claimed)
                f.flush()
            else:
                empty += 1
                time.sleep(0.01)
finally:
    pool.close()
"""


def read_claims(path: Path) -> dict[int, uuid.UUID]:
    claims: dict[int, uuid.UUID] = {}
    for line in path.read_text().splitlines():
        task_id, token = line.split()
        assert int(task_id) not in claims, f"{path.name} got task {task_id} twice"
        claims[int(task_id)] = uuid.UUID(token)
    return claims


def test_two_racing_claimers_never_claim_one_task_twice(dsn: str, tmp_path: Path) -> None:
    ids = {
        r["id"]
        for r in query(
            dsn,
            "INSERT INTO tasks (command, scheduled_at)"
            " SELECT 'true', now() - interval '1 second' FROM generate_series(1, %s)"
            " RETURNING id",
            (TASKS,),
        )
    }
    assert len(ids) == TASKS
    script = tmp_path / "claimer.py"
    script.write_text(CLAIMER)
    go = tmp_path / "go"
    names = ["claimer-a", "claimer-b"]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        launch_until_ready(procs, {
            name: [str(script), dsn, name, str(tmp_path / f"{name}.ready"), str(go),
                   str(tmp_path / f"{name}.out"), str(BATCH), str(EMPTY_CLAIMS_TO_STOP)]
            for name in names
        }, lambda name: tmp_path / f"{name}.ready", what="both claimers to connect")
        started = time.monotonic()
        go.touch()
        for name, proc in procs.items():
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name} failed: {err.decode()}"
        elapsed = time.monotonic() - started
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    claims = {name: read_claims(tmp_path / f"{name}.out") for name in names}
    a, b = (set(claims[name]) for name in names)
    both = a & b
    assert not both, f"{len(both)} tasks claimed by both processes, e.g. {sorted(both)[:10]}"
    assert a | b == ids, (
        f"missing {sorted(ids - (a | b))[:10]}, unknown {sorted((a | b) - ids)[:10]}"
    )
    assert a and b, (
        f"one process claimed everything ({len(a)} vs {len(b)} in {elapsed:.2f}s):"
        " the race did not happen"
    )

    rows = query(dsn, "SELECT id, picked_at, claim_token, claimed_by FROM tasks")
    assert len(rows) == TASKS
    wrong = []
    for row in rows:
        owner = next(name for name in names if row["id"] in claims[name])
        if (row["picked_at"] is None or row["claimed_by"] != owner
                or row["claim_token"] != claims[owner][row["id"]]):
            wrong.append(row)
    assert not wrong, f"{len(wrong)} rows disagree with their claimer, e.g. {wrong[:3]}"
    tokens = {row["claim_token"] for row in rows}
    assert len(tokens) == TASKS, "every claim must carry its own fencing token"


def test_a_claim_never_returns_future_cancelled_finished_or_already_claimed_tasks(
    dsn: str, repo: TaskRepository
) -> None:
    def insert(extra_columns: str, extra_values: str, count: int) -> set[int]:
        rows = query(
            dsn,
            f"INSERT INTO tasks (command, scheduled_at{extra_columns})"
            f" SELECT 'true', {extra_values} FROM generate_series(1, %s) RETURNING id",
            (count,),
        )
        return {r["id"] for r in rows}

    due = insert("", "now() - interval '1 second'", 20)
    far_future = insert("", "now() + interval '1 hour'", 5)
    # Due by the database clock in ~1.5 s: must wait for the database's now(), not ours.
    soon = insert("", "now() + interval '1.5 seconds'", 3)
    cancelled = insert(", cancelled_at", "now() - interval '1 second', now()", 5)
    completed = insert(", picked_at, started_at, completed_at",
                       "now() - interval '1 second', now(), now(), now()", 5)
    failed = insert(", picked_at, started_at, failed_at",
                    "now() - interval '1 second', now(), now(), now()", 5)
    already_claimed = insert(", picked_at, claim_token, claimed_by",
                             "now() - interval '1 second', now(), gen_random_uuid(), 'other'", 5)

    first = {t.id for t in repo.claim_due(coordinator_id="c1", limit=1000)}
    assert first == due, (
        f"unexpected {sorted(first - due)}, missing {sorted(due - first)}"
    )
    assert repo.claim_due(coordinator_id="c1", limit=1000) == []

    claimed_soon: set[int] = set()

    def soon_claimed() -> bool:
        got = {t.id for t in repo.claim_due(coordinator_id="c1", limit=1000)}
        assert got <= soon, f"claimed tasks that must never be claimed: {sorted(got - soon)}"
        claimed_soon.update(got)
        return claimed_soon == soon

    wait_for(soon_claimed, timeout=15, what="the near-future tasks to become due")

    early = query(
        dsn,
        "SELECT id, scheduled_at, picked_at FROM tasks"
        " WHERE picked_at < scheduled_at AND id = ANY(%s)",
        (sorted(due | soon),),
    )
    assert not early, f"claimed before scheduled_at by the database clock: {early}"
    untouched = query(
        dsn,
        "SELECT id FROM tasks WHERE id = ANY(%s)"
        " AND (picked_at IS NOT NULL OR claimed_by IS NOT NULL OR claim_token IS NOT NULL)",
        (sorted(far_future | cancelled),),
    )
    assert not untouched, f"future or cancelled tasks were claimed: {untouched}"
    others = query(
        dsn,
        "SELECT id FROM tasks WHERE id = ANY(%s) AND claimed_by = 'c1'",
        (sorted(completed | failed | already_claimed),),
    )
    assert not others, f"finished or already-claimed tasks were re-claimed: {others}"
