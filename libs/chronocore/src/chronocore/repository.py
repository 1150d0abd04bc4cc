"""The task repository: domain verbs over the named queries of queries.sql.

How a task moves, and who may move it (the rules the whole cluster relies on):

    scheduled --claim_due--> picked --mark_started--> running --mark_finished--> succeeded
        ^                      |                         |                       or failed
        |   release_claims /   |                         | worker dead:
        +-- requeue_stale -----+                         +-- recover_lost_runs --> failed
        +------------- at_least_once retry (backoff) ----+                  (worker_lost)
    any state but finished --cancel--> cancelled

* Claim: one statement picks due tasks with ``FOR UPDATE SKIP LOCKED`` and gives each a
  fresh ``claim_token``; coordinators claiming side by side never get the same task.
* Fencing: every later write about a task (start, finish, release) names the token it was
  given and changes nothing when the token is no longer current, so a paused or
  partitioned node that comes back late cannot overwrite a newer owner's record.
* Started before spawn: ``mark_started`` commits ``started_at`` before the worker spawns
  the command. A task that was claimed but never started can always be handed out again;
  one that started is never started again unless it is ``at_least_once``.
* Spawn within the start's lease: ``mark_started`` also moves the worker's heartbeat, so
  no sweep can judge the worker dead (and recover the attempt) until a TTL after it sent
  the start. The worker spawns only within half of that; a spawn later than that (the
  worker was paused or starved) first asks again (``confirm_start``, a heartbeat too), so
  an attempt recovered meanwhile never runs beside its retry.
* Time is the database's: every ``now()`` is PostgreSQL's, never a node's clock.
* By hand: a retry is a new task made from a finished one (``retry_of`` names it), never
  the finished one moved back; a job's run now is one more occurrence. Both meet the
  job's concurrency policy as a tick does (``make_way``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from chronocore import failpoints
from chronocore.cron import Schedule
from chronocore.jobs import JobRow, JobSpec, Plan, patched, plan
from chronocore.model import (
    TERMINAL_STATUSES,
    Attempt,
    Submission,
    TaskRow,
    fingerprint,
    format_timestamp,
)
from chronocore.queries import Queries, row_as
from chronocore.rpc import worker_pb2


class IdempotencyConflict(Exception):
    """The idempotency key is taken by a submission with a different payload."""

    def __init__(self, task_id: int) -> None:
        super().__init__(f"idempotency key already used by task {task_id} with another payload")
        self.task_id = task_id


def replayed(existing: dict[str, Any] | None, request_hash: str) -> tuple[int, bool] | None:
    """``(id, False)`` for a replay of the request that made ``existing`` (the row its
    idempotency key names, or None); ``IdempotencyConflict`` if another request made it."""
    if existing is None:
        return None
    if existing["request_hash"] != request_hash:
        raise IdempotencyConflict(existing["id"])
    return existing["id"], False


@dataclass(frozen=True, kw_only=True)
class ClaimedTask:
    id: int
    command: str
    token: uuid.UUID
    timeout_s: float | None
    env: dict[str, str]
    scheduled_at: datetime
    # The labels the worker must have (None: any worker).
    target: dict[str, str] | None = None
    # A broadcast's task runs on this worker only.
    pinned_worker: str | None = None

    # The worker is told what it runs; whom it may run on stays with the coordinator.
    def to_message(self) -> worker_pb2.Task:
        return worker_pb2.Task(
            id=self.id, command=self.command, claim_token=str(self.token),
            timeout_s=self.timeout_s or 0.0, env=self.env,
            scheduled_at=format_timestamp(self.scheduled_at))

    @classmethod
    def from_message(cls, message: worker_pb2.Task) -> ClaimedTask:
        """Raises ValueError for a malformed token or instant."""
        return cls(id=message.id, command=message.command,
                   token=uuid.UUID(message.claim_token), timeout_s=message.timeout_s or None,
                   env=dict(message.env),
                   scheduled_at=datetime.fromisoformat(message.scheduled_at))


@dataclass(frozen=True)
class Started:
    attempt: int
    lateness_s: float  # started_at - max(scheduled_at, created_at), by the database clock


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How one attempt ended, as the worker records it."""

    succeeded: bool
    exit_code: int | None
    error: str | None
    output: str


@dataclass(frozen=True, kw_only=True)
class Cancelled:
    """A task cancelled (by hand, or by its job's replace policy) or skipped (forbid);
    a worker that started it is told to stop it."""

    id: int
    job_id: int | None = None
    started_at: datetime | None = None
    worker_id: str | None = None

    @property
    def running_on(self) -> str | None:
        return self.worker_id if self.started_at is not None else None


@dataclass(frozen=True)
class LostRun:
    """A run recovered from a dead worker: retried, or failed as worker_lost."""

    task_id: int
    retry: bool


@dataclass(frozen=True)
class Materialized:
    """What one materialization step did for one job."""

    job_id: int
    tasks: list[int]
    skipped: int  # missed occurrences its misfire policy dropped


@dataclass(frozen=True)
class JobHealth:
    id: int
    name: str
    missed_occurrences: int
    forbidden_occurrences: int
    last_run_at: datetime | None
    last_success_at: datetime | None
    # What its expected period is reckoned from.
    cron: str
    timezone: str
    paused: bool
    created_at: datetime
    now: datetime


@dataclass(frozen=True, kw_only=True)
class Backoff:
    base_s: float = 1.0
    max_s: float = 300.0


class TaskRepository:
    def __init__(self, db: Queries | ConnectionPool, *, backoff: Backoff | None = None,
                 node_ttl_s: float = 5.0) -> None:
        self._db = Queries.over(db)
        self._backoff = backoff or Backoff()
        # Who is live for a broadcast: the cluster's liveness rule (CHRONOSYNC_NODE_TTL_S).
        self._node_ttl_s = node_ttl_s

    # --- the API's side -------------------------------------------------------------

    def submit(self, submission: Submission) -> tuple[int, bool]:
        """Store a submission; returns ``(task_id, created)``.

        A replay of an idempotency key with the same payload returns the first task with
        ``created=False``; with another payload it raises ``IdempotencyConflict``.
        """
        request_hash = submission.request_hash()
        if submission.target is not None and submission.target.get("all"):
            return self._submit_broadcast(submission, request_hash)
        row = self._db.one(
            "insert_task", command=submission.command,
            scheduled_at=submission.scheduled_at, delivery=submission.delivery,
            max_attempts=submission.max_attempts, timeout_s=submission.timeout_s,
            env=Jsonb(submission.env), name=submission.name,
            idempotency_key=submission.idempotency_key, request_hash=request_hash,
            job_id=None,
            target=None if submission.target is None else Jsonb(submission.target),
            webhooks=None if submission.webhooks is None else Jsonb(submission.webhooks))
        if row is not None:
            return row["id"], True
        replay = replayed(self._db.one("task_by_idempotency_key",
                                       key=submission.idempotency_key), request_hash)
        # None: the conflicting row vanished in between: try once more.
        return self.submit(submission) if replay is None else replay

    def _submit_broadcast(self, submission: Submission,
                          request_hash: str) -> tuple[int, bool]:
        """One task per live worker matching the target (see ``insert_broadcast``), in one
        transaction; the idempotency key, if any, names the first."""
        key = submission.idempotency_key
        with self._db.transaction() as tx:
            if key is not None:
                tx.run("lock_idempotency_key", key=key)
                replay = replayed(tx.one("task_by_idempotency_key", key=key), request_hash)
                if replay is not None:
                    return replay
            rows = tx.all(
                "insert_broadcast", command=submission.command,
                scheduled_at=submission.scheduled_at, delivery=submission.delivery,
                max_attempts=submission.max_attempts, timeout_s=submission.timeout_s,
                env=Jsonb(submission.env), name=submission.name, idempotency_key=key,
                request_hash=request_hash, target=Jsonb(submission.target),
                broadcast_id=uuid.uuid4(), ttl_s=self._node_ttl_s,
                webhooks=None if submission.webhooks is None else Jsonb(submission.webhooks))
        return min(r["id"] for r in rows), True

    def broadcast_tasks(self, broadcast_id: uuid.UUID) -> list[int]:
        return [r["id"] for r in self._db.all("broadcast_tasks", id=broadcast_id)]

    def get(self, task_id: int) -> tuple[TaskRow, list[Attempt]] | None:
        """A task and its attempts, or None."""
        with self._db.session() as db:
            row = db.one("get_task", id=task_id)
            if row is None:
                return None
            return row_as(TaskRow, row), [row_as(Attempt, a)
                                          for a in db.all("task_attempts", id=task_id)]

    def list(self, *, status: str | None, job_id: int | None, before: int | None,
             limit: int, worker: str | None = None,
             text: str | None = None) -> list[TaskRow]:
        return [row_as(TaskRow, r) for r in self._db.all(
            "list_tasks", status=status, job_id=job_id, before=before, limit=limit,
            worker=worker, text=text, output_chars=LISTED_OUTPUT_CHARS)]

    def queue_depth(self) -> dict[str, float]:
        row = self._db.one("queue_depth")
        assert row is not None
        return {"due": row["due"], "later": row["later"], "due_age_s": row["due_age_s"]}

    def in_flight(self) -> dict[str, int]:
        row = self._db.one("in_flight")
        assert row is not None
        return {"picked": row["picked"], "running": row["running"]}

    def cancel(self, task_id: int) -> Cancelled | None:
        """Mark a task cancelled; None if it was finished or cancelled already."""
        row = self._db.one("cancel_task", id=task_id)
        return None if row is None else row_as(Cancelled, row)

    def retry(self, task_id: int, *, idempotency_key: str | None = None) -> HandRun | None:
        """A new task from a finished one, due now, naming it in ``retry_of``; None if
        there is no such task. Raises ``RunRefused`` for a task not finished, or for one
        of a job whose concurrency policy would skip it (see ``make_way``), and
        ``IdempotencyConflict`` for a key another request took.

        A job's task stays the job's: the retry keeps its ``job_id`` (it shows in the
        job's history) and the policy it ran under, and is an occurrence like any other.
        """
        request_hash = fingerprint({"retry_of": task_id})
        if idempotency_key is not None:
            replay = self._replay(idempotency_key, request_hash)
            if replay is not None:
                return replay
        try:
            with self._db.transaction() as tx:
                original = tx.one("lock_task", id=task_id)
                if original is None:
                    return None
                refuse_unfinished(original)
                now = tx.now()
                replaced: list[Cancelled] = []
                if original["job_id"] is not None:
                    tx.run("hand_runs_one_at_a_time", id=original["job_id"])
                    replaced = make_way(tx, job_id=original["job_id"],
                                        policy=original["concurrency_policy"], at=now)
                made = insert_by_hand(
                    tx, "insert_retry", lambda at: {
                        "id": task_id, "at": at, "idempotency_key": idempotency_key,
                        "request_hash": request_hash},
                    now=now, idempotency_key=idempotency_key)
                return HandRun(task_id=made, created=True, replaced=replaced)
        except KeyTaken:  # by a request just committed: this one's changes are undone
            pass
        replay = self._replay(idempotency_key, request_hash)
        assert replay is not None
        return replay

    def _replay(self, key: str | None, request_hash: str) -> HandRun | None:
        """The task an idempotency key already names, if it was made by the same request."""
        replay = replayed(self._db.one("task_by_idempotency_key", key=key), request_hash)
        return None if replay is None else HandRun(task_id=replay[0], created=False,
                                                   replaced=[])

    # --- the coordinator's side -----------------------------------------------------

    def claim_due(self, *, coordinator_id: str, limit: int,
                  free_workers: Sequence[Mapping[str, Any]] = ()) -> list[ClaimedTask]:
        """Claim up to ``limit`` due tasks; a targeted one only if one of
        ``free_workers`` (``{"id", "labels"}`` of workers with free slots) satisfies its
        target (and is the worker it is pinned to, if it is)."""
        rows = self._db.all("claim_due", coordinator_id=coordinator_id, limit=limit,
                            free_workers=Jsonb(list(free_workers)))
        return [
            ClaimedTask(
                id=r["id"], command=r["command"], token=r["claim_token"],
                timeout_s=r["timeout_s"], env=r["env"], scheduled_at=r["scheduled_at"],
                target=None if r["target"] is None else r["target"]["labels"],
                pinned_worker=r["pinned_worker"],
            )
            for r in rows
        ]

    def sort_targeted(self, *, ttl_s: float, judge_dead: bool) -> dict[str, list[int]]:
        """Targeted tasks by what live workers match now: set aside those none matches,
        bring back those one does, and (``judge_dead``) fail as worker_lost a broadcast's
        unstarted task whose worker died. Returns the ids by what became of them."""
        done: dict[str, list[int]] = {"failed": [], "restored": [], "set_aside": []}
        for row in self._db.all("sort_targeted", ttl_s=ttl_s, judge_dead=judge_dead):
            done[row["what"]].append(row["id"])
        return done

    def next_due_in(self, *, free_workers: Sequence[Mapping[str, Any]] = ()
                    ) -> float | None:
        """Seconds until the next waiting task the claim would take (with these
        ``free_workers``, as ``claim_due``) is due (negative: overdue); None if none."""
        row = self._db.one("next_due_in", free_workers=Jsonb(list(free_workers)))
        return None if row is None else row["seconds"]

    def release(self, tasks: list[ClaimedTask]) -> None:
        if tasks:
            ordered = sorted(tasks, key=lambda t: t.id)  # one lock order for every batch
            self._db.run("release_claims", ids=[t.id for t in ordered],
                         tokens=[t.token for t in ordered])

    def prune_finished(self, *, retention_s: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks older than the retention age."""
        return len(self._db.all("prune_finished", retention_s=retention_s, limit=limit))

    def requeue_stale_claims(self, *, lease_s: float) -> list[int]:
        return [r["id"] for r in self._db.all("requeue_stale_claims", lease_s=lease_s)]

    def recover_lost_runs(self, *, ttl_s: float, sweeper: str,
                          fresh_s: float) -> list[LostRun]:
        """Tasks started on dead workers: failed as worker_lost, or retried. Only while
        the ``sweeper``'s own heartbeat is younger than ``fresh_s`` (database clock)."""
        return [LostRun(r["task_id"], r["retry"]) for r in self._db.all(
            "recover_lost_runs", ttl_s=ttl_s, sweeper=sweeper, fresh_s=fresh_s,
            backoff_base_s=self._backoff.base_s, backoff_max_s=self._backoff.max_s)]

    # --- the worker's side ----------------------------------------------------------

    def mark_started(self, tasks: list[ClaimedTask], *,
                     worker_id: str) -> dict[int, Started]:
        """Commit the start of these attempts in one statement; returns the ones that may
        run, by id. A task left out was fenced off (the claim is no longer ours, or the
        task was cancelled): never spawn it."""
        ordered = sorted(tasks, key=lambda t: t.id)  # one lock order for every batch
        rows = self._db.all("mark_started", ids=[t.id for t in ordered],
                            tokens=[t.token for t in ordered], worker_id=worker_id)
        return {r["id"]: Started(r["attempt"], r["lateness_s"]) for r in rows}

    def confirm_start(self, task: ClaimedTask, *, worker_id: str) -> str | None:
        """None while a started attempt is still this worker's to spawn, else why not:
        "cancelled", or "worker_lost" (recovered or finished meanwhile). Also a
        heartbeat, as ``mark_started`` is."""
        row = self._db.one("confirm_start", id=task.id, token=task.token,
                           worker_id=worker_id)
        if row is None:
            return "worker_lost"
        return "cancelled" if row["cancelled"] else None

    def refuse(self, task: ClaimedTask, *, worker_id: str, error: str) -> bool:
        """Fail a claimed task this worker will not run (never started); fenced."""
        row = self._db.one("refuse_task", id=task.id, token=task.token,
                           worker_id=worker_id, error=error)
        return row is not None

    def mark_finished(self, finished: list[tuple[ClaimedTask, Outcome]]) -> set[int]:
        """Record these attempts' ends in one statement; returns the ids written. A task
        left out was fenced off (someone else owns it now)."""
        ordered = sorted(finished, key=lambda f: f[0].id)
        rows = self._db.all(
            "mark_finished", ids=[t.id for t, _ in ordered],
            tokens=[t.token for t, _ in ordered],
            succeeded=[o.succeeded for _, o in ordered],
            exit_codes=[o.exit_code for _, o in ordered],
            errors=[o.error for _, o in ordered], outputs=[o.output for _, o in ordered],
            backoff_base_s=self._backoff.base_s, backoff_max_s=self._backoff.max_s)
        return {r["task_id"] for r in rows}

    def revoked_among(self, running: dict[int, uuid.UUID]) -> dict[int, str]:
        """Of these running attempts (id -> token), those that must stop, with why:
        "cancelled", or "worker_lost" when the claim is no longer ours."""
        if not running:
            return {}
        rows = self._db.all("revoked_among", ids=list(running),
                            tokens=list(running.values()))
        return {r["id"]: "cancelled" if r["cancelled"] else "worker_lost" for r in rows}


PAUSED_REASON = "skipped: job paused"
DELETED_REASON = "skipped: job deleted"
# A listed task carries the end of its output, this many characters: a page of 1,000
# stays a few MiB (GET /tasks/{id} has the whole 64 KiB).
LISTED_OUTPUT_CHARS = 4096
# Jobs one materialize step takes: their occurrences go in one INSERT. Large enough that
# a minute's 100,000 jobs are a hundred statements, small enough that a step's
# statements (and their row locks) stay short.
MATERIALIZE_BATCH = 1000
# How long a materialization step holds the jobs it took before another scheduler may
# take them over, as a share of the horizon: a step frozen midway delays a job's next
# ticks by at most this, and they are still made more than half a horizon ahead of their
# time (5 s horizon: a 2 s lease). A step takes milliseconds; one that outlives its lease
# only loses its work (its write is fenced off by the token).
LEASE_SHARE_OF_HORIZON = 0.4
MIN_LEASE_S = 0.1
# An edit or a deletion that finds the job changed under it reads it again, this many
# times at most: a job changes a couple of times per second at most (lease, advance).
MAX_WRITE_TRIES = 50


class JobExists(Exception):
    """Another job already has this name."""


class JobBusy(Exception):
    """The job kept changing under an edit or a deletion, which gave up."""


class JobRepository:
    """Recurring jobs, and their materialization into tasks (see chronocore.jobs)."""

    def __init__(self, db: Queries | ConnectionPool, *, node_ttl_s: float = 5.0) -> None:
        self._db = Queries.over(db)
        # Who is live when a broadcast job's occurrence is made (one task per worker).
        self._node_ttl_s = node_ttl_s

    def database_now(self) -> datetime:
        return self._db.now()

    def create(self, spec: JobSpec) -> tuple[int, bool]:
        """Store a job; returns ``(job_id, created)`` like ``TaskRepository.submit``."""
        request_hash = spec.request_hash()
        with self._db.session() as db:
            first = next(spec.schedule.after(db.now() - timedelta(microseconds=1)))
            try:
                row = db.one("insert_job", **self._columns(spec), next_run_at=first,
                             idempotency_key=spec.idempotency_key, request_hash=request_hash)
            except psycopg.errors.UniqueViolation:
                raise JobExists(f"a job named {spec.name!r} exists already") from None
            if row is not None:
                return row["id"], True
            existing = db.one("job_by_idempotency_key", key=spec.idempotency_key)
        replay = replayed(existing, request_hash)
        return self.create(spec) if replay is None else replay

    def get(self, job_id: int) -> JobRow | None:
        row = self._db.one("get_job", id=job_id)
        return None if row is None else row_as(JobRow, row)

    def list(self, *, before: int | None, limit: int) -> list[JobRow]:
        return [row_as(JobRow, r) for r in self._db.all("list_jobs", before=before,
                                                        limit=limit)]

    def update(self, job_id: int, patch: object) -> JobRow | None:
        """Apply a PATCH; None if there is no such job.

        A new schedule takes effect from the first occurrence after both now and the last
        one already made a task; resuming starts from now (what fell in the pause is not
        run); pausing cancels the tasks made ahead of time that no coordinator took yet.

        Optimistic, holding no lock between round trips: read the job (unlocked), merge
        and plan here, then write in one statement on condition that the row is still the
        version read; if anything changed it meanwhile (a materialization advancing it,
        another edit), read again.
        """
        for _ in range(MAX_WRITE_TRIES):
            with self._db.session() as db:
                row = db.one("job_to_update", id=job_id)
                if row is None:
                    return None
                job = row_as(JobRow, row)
                spec = patched(job, patch)
                next_run_at = job.next_run_at
                rescheduled = (spec.schedule.expression, spec.schedule.timezone) != (
                    job.cron, job.timezone)
                resumed = job.paused_at is not None and not spec.paused
                if rescheduled or resumed:
                    last = row["last_occurrence"]
                    start = row["now"] if last is None else max(row["now"], last)
                    next_run_at = next(spec.schedule.after(start))
                try:
                    changed = db.one(
                        "update_job", **self._columns(spec), id=job_id,
                        next_run_at=next_run_at, row_version=row["row_version"],
                        reason=PAUSED_REASON, restore=resumed and not rescheduled,
                        cancel=spec.paused and job.paused_at is None)
                except psycopg.errors.UniqueViolation:
                    raise JobExists(f"a job named {spec.name!r} exists already") from None
            if changed is not None:
                return row_as(JobRow, changed)
        raise JobBusy(f"job {job_id} kept changing while being updated; try again")

    def recent_outcomes(self, job_ids: list[int], *, count: int = 10
                        ) -> dict[int, list[dict[str, Any]]]:
        """The latest ``count`` due tasks of each job, oldest first."""
        outcomes: dict[int, list[dict[str, Any]]] = {job_id: [] for job_id in job_ids}
        if job_ids:
            for row in self._db.all("recent_outcomes", ids=job_ids, count=count):
                outcomes[row["job_id"]].append(
                    {"id": row["id"], "status": row["status"], "error": row["error"],
                     "scheduled_at": row["scheduled_at"]})
        return outcomes

    def run_now(self, job_id: int) -> HandRun | None:
        """An extra occurrence of a job, due now, made as a tick is made (from the job as
        it is now, paused or not); the schedule (``next_run_at``) does not move. None if
        there is no such job; ``RunRefused`` when its concurrency policy would skip it."""
        with self._db.transaction() as tx:
            tx.run("hand_runs_one_at_a_time", id=job_id)
            job = tx.one("get_job", id=job_id)
            if job is None:
                return None
            now = tx.now()
            replaced = make_way(tx, job_id=job_id, policy=job["concurrency_policy"], at=now)
            made = insert_by_hand(tx, "insert_occurrences",
                                  lambda at: {"job_ids": [job_id], "occurrences": [at],
                                              "ttl_s": self._node_ttl_s},
                                  now=now)
            return HandRun(task_id=made, created=True, replaced=replaced)

    def delete(self, job_id: int) -> bool:
        """Delete a job and cancel its tasks not yet started, in one statement; False if
        there is no such job. It waits for a run by hand of the job being made (they
        take the same advisory lock): its task, committed by then, is cancelled too."""
        for _ in range(MAX_WRITE_TRIES):
            with self._db.transaction() as tx:
                tx.run("hand_runs_one_at_a_time", id=job_id)
                row = tx.one("delete_job", id=job_id, reason=DELETED_REASON)
            if row["deleted"] is not None:
                return True
            if row["seen"] is None:
                return False
        raise JobBusy(f"job {job_id} kept changing while being deleted; try again")

    def materialize(self, *, horizon_s: float,
                    limit: int = MATERIALIZE_BATCH) -> list[Materialized]:
        """One step: turn due occurrences of up to ``limit`` jobs into tasks.

        Two statements and no transaction around them, so no row lock outlives a round
        trip and a scheduler frozen mid-step (SIGSTOP, a host gone without closing its
        connections) blocks no other scheduler's step and no edit of the job:

        1. lease: the due jobs no one holds are leased to this step under fresh tokens
           (picked with SKIP LOCKED, so racing schedulers share the work) until
           ``lease_s`` from now, by the database clock;
        2. here, with no lock held: each job's occurrences are planned (cronsim, in the
           job's time zone);
        3. write: one statement advances the jobs whose token is still the step's and
           inserts their occurrences. A holder that outlived its lease (another scheduler
           took the job over) or whose job was edited or deleted meanwhile finds its
           token gone and writes nothing for that job: its plan may be stale.

        Each occurrence is one task whatever happens: only the token's holder advances a
        job, the unique (job_id, scheduled_at) key makes any overlap harmless, and the
        advance and the insert commit together. Returns per job advanced what was made
        and skipped.
        """
        lease_s = max(horizon_s * LEASE_SHARE_OF_HORIZON, MIN_LEASE_S)
        with self._db.session() as db:
            jobs = db.all("lease_jobs_to_materialize", horizon_s=horizon_s, limit=limit,
                          lease_s=lease_s)
            if not jobs:
                return []
            failpoints.pause(failpoints.MID_MATERIALIZE)
            # Jobs alike (same schedule, next run and policies: a fleet's "every minute")
            # have the same plan: computed once per step.
            plans: dict[tuple[Any, ...], Plan] = {}
            steps = {}
            tokens = {}
            for job in jobs:
                key = tuple(job[k] for k in ("cron", "timezone", "next_run_at",
                                             "misfire_policy", "starting_deadline_s",
                                             "max_catchup"))
                if key not in plans:
                    plans[key] = plan(
                        schedule=Schedule(job["cron"], job["timezone"]),
                        next_run_at=job["next_run_at"], now=job["now"],
                        horizon=timedelta(seconds=horizon_s),
                        misfire_policy=job["misfire_policy"],
                        starting_deadline_s=job["starting_deadline_s"],
                        max_catchup=job["max_catchup"])
                steps[job["id"]] = plans[key]
                tokens[job["id"]] = job["lease_token"]
            ids = sorted(steps)  # one lock order for every step
            # Each job's occurrences are the slice [first, first + count) of one array.
            occurrences: list[datetime] = []
            firsts = []
            for job_id in ids:
                firsts.append(len(occurrences) + 1)
                occurrences.extend(steps[job_id].occurrences)
            rows = db.all(
                "make_occurrences", ids=ids, tokens=[tokens[i] for i in ids],
                next_run_ats=[steps[i].next_run_at for i in ids],
                skipped=[steps[i].skipped for i in ids], firsts=firsts,
                counts=[len(steps[i].occurrences) for i in ids], occurrences=occurrences,
                planned_at=jobs[0]["now"], ttl_s=self._node_ttl_s)
        made = {r["job_id"]: r["tasks"] for r in rows}
        return [Materialized(job_id, made[job_id], steps[job_id].skipped)
                for job_id in ids if job_id in made]

    def enforce_concurrency(self) -> tuple[list[Cancelled], list[Cancelled]]:
        """forbid: skip due occurrences while an earlier one runs; replace: cancel the
        earlier one. Returns ``(skipped, replaced)``."""
        with self._db.session() as db:
            return ([row_as(Cancelled, r) for r in db.all("skip_forbidden")],
                    [row_as(Cancelled, r) for r in db.all("replace_running")])

    def health(self) -> list[JobHealth]:
        """Per job: last run, last success, skipped occurrences (for /metrics)."""
        return [row_as(JobHealth, r) for r in self._db.all("job_health")]

    @staticmethod
    def _columns(spec: JobSpec) -> dict[str, Any]:
        return {
            "name": spec.name, "command": spec.command, "cron": spec.schedule.expression,
            "timezone": spec.schedule.timezone, "delivery": spec.delivery,
            "max_attempts": spec.max_attempts, "timeout_s": spec.timeout_s,
            "env": Jsonb(spec.env), "concurrency_policy": spec.concurrency_policy,
            "misfire_policy": spec.misfire_policy,
            "starting_deadline_s": spec.starting_deadline_s,
            "max_catchup": spec.max_catchup, "paused": spec.paused,
            "target": None if spec.target is None else Jsonb(spec.target),
            "webhooks": None if spec.webhooks is None else Jsonb(spec.webhooks),
        }


# --- runs made by hand: POST /tasks/{id}/retry and POST /jobs/{id}/run ------------------

# The instants a run made by hand may take, tried in turn. Each occurrence of a job is
# one task by the unique key (job_id, scheduled_at): a run by hand is due at the
# database's now, off the whole second (where every cron tick falls, made or still to
# come, so it never takes a tick's place) and a microsecond later for each run by hand
# that already took an instant (two in the same microsecond).
HAND_INSTANT_TRIES = 1000


@dataclass(frozen=True, kw_only=True)
class HandRun:
    """A task made by hand: a retry, or a job's run now."""

    task_id: int
    created: bool  # False: an idempotent replay of an earlier request
    replaced: list[Cancelled]  # cancelled by its job's replace policy


class RunRefused(Exception):
    """A run by hand refused: the task has not finished, or the job's concurrency policy
    forbids it now."""


class KeyTaken(Exception):
    """The idempotency key was taken meanwhile (inside a transaction, to roll it back)."""


def hand_instants(now: datetime) -> Iterator[datetime]:
    at = now if now.microsecond else now + timedelta(microseconds=1)
    for _ in range(HAND_INSTANT_TRIES):
        yield at
        at += timedelta(microseconds=1)
        if at.microsecond == 0:
            at += timedelta(microseconds=1)
    raise RuntimeError(f"no free instant for a run by hand after {now}")


def insert_by_hand(tx: Queries, name: str,
                   params: Callable[[datetime], dict[str, Any]], *, now: datetime,
                   idempotency_key: str | None = None) -> int:
    """Run the insert ``name`` (``ON CONFLICT DO NOTHING ... RETURNING id``) at the first
    instant of ``hand_instants(now)`` no other task of the job holds; the new task's id.
    Raises ``KeyTaken`` when it is the idempotency key that another request holds."""
    for at in hand_instants(now):
        row = tx.one(name, **params(at))
        if row is not None:
            return row["id"]
        if idempotency_key is not None and tx.one("task_by_idempotency_key",
                                                  key=idempotency_key) is not None:
            raise KeyTaken
    raise AssertionError("unreachable: hand_instants ends by raising")


def refuse_unfinished(task: dict[str, Any]) -> None:
    """Only a finished task is retried: one still waiting or running would then run
    twice, and a cancelled one still stopping would run beside its retry."""
    status = task["status"]
    if status not in TERMINAL_STATUSES:
        raise RunRefused(f"task {task['id']} is {status}: only a finished task (succeeded, "
                         "failed or cancelled) can be retried")
    if task["started_at"] is not None and task["completed_at"] is None \
            and task["failed_at"] is None:
        raise RunRefused(f"task {task['id']} is cancelled but its command is still "
                         "stopping; retry it once it has ended")


def make_way(tx: Queries, *, job_id: int, policy: str | None,
             at: datetime) -> list[Cancelled]:
    """What a job's occurrence made by hand, due at ``at``, meets, as a tick would: with
    ``forbid``, any other occurrence in flight or due before it means it would be skipped
    (raises ``RunRefused`` rather than make a task bound to be skipped); with
    ``replace``, those are cancelled (returned, so that their workers are told). A claim
    racing this decision is still ruled by the claim and the materializer's policy step.
    """
    if policy not in ("forbid", "replace"):
        return []
    ahead = tx.all("unfinished_before", job_id=job_id, at=at)
    if policy == "forbid":
        if ahead:
            raise RunRefused(
                f"job {job_id} has concurrency_policy forbid and its task {ahead[0]['id']} "
                f"is {ahead[0]['status']}: a run made now would be skipped; try again once "
                "it has ended")
        return []
    replaced = []
    for task in ahead:
        cancelled = tx.one("cancel_task", id=task["id"])
        if cancelled is not None:
            replaced.append(row_as(Cancelled, cancelled))
    return replaced
