"""The worker's slots: accept dispatched tasks up to capacity, run each one as SPEC §4
says, and record its fate in PostgreSQL.

Per task, on a pool thread: ``mark_started`` (fenced by the claim token, committed) ->
spawn -> wait -> ``mark_finished`` (fenced). A start the database refuses means the claim
is no longer ours or the task was cancelled: the command is never spawned. An outcome that
cannot be written because the database is down is retried until it is written or fenced
off, since the process already ran and its record must not be lost. Starts and outcomes
that threads record at the same time share one statement (``chronocore.groupcommit``);
each thread still waits for its own commit.

A command is spawned only within the start's lease (see ``chronocore.repository``): if
the worker was paused or starved between sending the start and spawning, it asks the
database again first, so an attempt recovered meanwhile never runs beside its retry.

A worker cut off from the database fences itself (``chronocore.fence``): each run holds a
lease, renewed by every answered write that moves the worker's heartbeat; a watchdog
thread SIGKILLs the process group of a run whose lease lapsed, before any sweep can give
the task to another worker, and the run is recorded ``worker_lost`` (fenced by its token)
once the database answers. While its own lease has lapsed the worker takes no new work.

Every spawned process group is reported to the reaper (``chronocore.reaper``), which
kills it if this worker dies. A stopping worker (``drain``) hands back tasks it accepted
but has not started, lets running commands finish within the grace period, and gives up
the rest as ``worker_lost`` (so an at_least_once task is retried elsewhere).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import psycopg

from chronocore import failpoints, metrics
from chronocore.fence import Leases
from chronocore.groupcommit import GroupCommit
from chronocore.model import format_timestamp
from chronocore.node import Lifecycle
from chronocore.reaper import Reaper
from chronocore.repository import ClaimedTask, Outcome, Started, TaskRepository
from chronocore.runner import (
    CommandRun,
    RunAs,
    RunResult,
    Sandbox,
    allowed,
    base_environment,
    env_refused,
)

log = logging.getLogger(__name__)

RUNS = metrics.Counter(
    "chronosync_runs_total",
    "Command runs by how they ended (succeeded, exit, timeout, cancelled, spawn).",
    *({"outcome": o} for o in ("succeeded", "exit", "timeout", "cancelled", "spawn")))
FENCED_WRITES = metrics.Counter("chronosync_fenced_writes_total",
                                "Late writes refused because the claim moved on.")
FENCED_RUNS = metrics.Counter("chronosync_fenced_runs_total",
                              "Runs killed because their lease lapsed (the worker could not "
                              "reach the database for about a TTL).")

RECORD_RETRY_FIRST_S = 0.2
RECORD_RETRY_MAX_S = 3.0
# After a failed round of the fence watchdog, the next one comes this soon.
WATCHDOG_RETRY_S = 0.1
# A confirmation that itself comes back too late is asked again, this many times at most.
CONFIRM_TRIES = 3


# The variables that tell one run's processes from any other's, by which the reaper finds
# a command spawned just before the worker died: a task's attempt runs once, on one
# worker, and the worker's id is unique, so another cluster's task with the same id and
# attempt on the same machine (another suite, another deployment) is never taken for it.
RUN_IDENTITY = ("CHRONOSYNC_TASK_ID", "CHRONOSYNC_ATTEMPT", "CHRONOSYNC_WORKER_ID")


def command_environment(base: dict[str, str], task: ClaimedTask, attempt: int, *,
                        worker_id: str) -> dict[str, str]:
    """The base environment plus the task's own variables and the ones the command may
    rely on."""
    env = dict(base)
    env.update(task.env)
    env["CHRONOSYNC_TASK_ID"] = str(task.id)
    env["CHRONOSYNC_ATTEMPT"] = str(attempt)
    env["CHRONOSYNC_WORKER_ID"] = worker_id
    env["CHRONOSYNC_SCHEDULED_AT"] = format_timestamp(task.scheduled_at) or ""
    return env


@dataclass
class _Slot:
    task: ClaimedTask
    run: CommandRun | None = None
    stop_reason: str | None = None  # set when asked to stop before the run existed
    # Monotonic instant the start (or its latest confirmation) was sent: the worker
    # counts as alive in the database from then on, for a TTL.
    lease_from: float = 0.0
    ended: bool = False  # the command exited; its outcome is being recorded


class SlotPool:
    """A service: ``start`` begins the fence watchdog and the group-commit writers, and
    takes work from then on; ``stop`` is the worker's drain (``on_drain`` first, to say
    so), with ``grace_s`` for running commands. Safe to stop twice, or unstarted."""

    def __init__(self, *, repo: TaskRepository, worker_id: str, capacity: int,
                 workdir: str, kill_grace_s: float, reaper: Reaper | None,
                 lease_s: float, ttl_s: float, run_as: RunAs | None = None,
                 sandbox: Sandbox | None = None, gated: bool = True,
                 allowlist: tuple[str, ...] | None = None,
                 env_allowlist: tuple[str, ...] = (),
                 pass_env: tuple[str, ...] = (), grace_s: float = 0.0,
                 on_drain: Callable[[], None] = lambda: None) -> None:
        """``lease_s``: how long after sending a start the worker may still spawn without
        asking again; well under the TTL after which sweepers judge it dead. ``ttl_s``:
        that TTL, from which each run's lease is made (``chronocore.fence``). ``gated``:
        each command checks its spawn's deadline itself (``chronocore.runner.gated``)."""
        self._repo = repo
        self._gated = gated
        self._run_as = run_as
        self._sandbox = sandbox
        self._allowlist = allowlist
        self._env_allowlist = env_allowlist
        self._worker_id = worker_id
        self.capacity = capacity
        self._workdir = workdir
        self._base_env = base_environment(os.environ, pass_env)
        self._kill_grace_s = kill_grace_s
        self._lease_s = lease_s
        self._reaper = reaper
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._grace_s = grace_s
        self._on_drain = on_drain
        self._life = Lifecycle(self._lock)
        self._draining = True  # until started: no work is taken before the threads run
        self._idle = threading.Condition(self._lock)
        self._version = 0  # bumped whenever a slot is freed, and when draining starts
        self._leases: Leases[int] = Leases(ttl_s=ttl_s)
        # Our own lease lapsed (or no write was answered yet): no new work until one is.
        self._fenced = True
        self._lease_changed = threading.Condition(self._lock)
        self._stopping = False
        self._watchdog = threading.Thread(target=self._watch_leases, name="fence",
                                          daemon=True)
        self._executor = ThreadPoolExecutor(max_workers=capacity, thread_name_prefix="run")
        self._starts: GroupCommit[ClaimedTask, tuple[Started, float] | None] = GroupCommit(
            self._write_starts, name="record-starts")
        self._outcomes: GroupCommit[tuple[ClaimedTask, Outcome], bool] = GroupCommit(
            self._write_outcomes, name="record-outcomes")

    def start(self) -> None:
        if not self._life.begin():
            return
        self._starts.start()
        self._outcomes.start()
        self._watchdog.start()
        with self._lock:
            self._draining = self._life.stopped
            self._version += 1  # slot watchers learn we take work
            self._idle.notify_all()

    def stop(self) -> None:
        """Say we drain (``on_drain``), then ``drain`` with the grace given."""
        if not self._life.end():
            return
        log.info("draining: waiting up to %.0fs for %d running commands", self._grace_s,
                 self.running)
        try:
            self._on_drain()
        except Exception as exc:  # the database may be down: dispatchers learn it by RPC too
            log.warning("could not mark draining: %s", exc)
        self.drain(grace_s=self._grace_s)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._slots)

    @property
    def draining(self) -> bool:
        """Taking no new work: stopping, or fenced off (cut off from the database)."""
        return self._draining or self._fenced

    def renewed(self, sent: float) -> None:
        """A write that moves our heartbeat, sent at ``sent`` (``time.monotonic()``), was
        answered: every run's lease still holding is extended; one that lapsed before
        this answer came is fenced now."""
        with self._lock:
            now = time.monotonic()
            self._fence(self._leases.renewed(sent, now=now))
            self._set_fenced(not self._leases.holds(now))
            self._lease_changed.notify_all()

    def offer(self, tasks: list[ClaimedTask]) -> tuple[list[int], list[int]]:
        """Take what fits in the free slots; returns ``(accepted, rejected)`` ids."""
        accepted: list[_Slot] = []
        rejected: list[int] = []
        with self._lock:
            for task in tasks:
                if (self.draining or len(self._slots) >= self.capacity
                        or task.id in self._slots):
                    rejected.append(task.id)
                    continue
                slot = self._slots[task.id] = _Slot(task)
                accepted.append(slot)
            # No version bump: the dispatcher learns of taken slots from our reply, and
            # watchers need to hear only of freed ones (half the stream's messages).
        for slot in accepted:
            self._executor.submit(self._run_task, slot)
        return [slot.task.id for slot in accepted], rejected

    def wait_change(self, seen: int, *, timeout: float) -> tuple[int, int]:
        """Block until a slot is freed (or draining starts) after version ``seen``, or the
        timeout; returns ``(version, running)``."""
        with self._lock:
            self._idle.wait_for(lambda: self._version != seen, timeout=timeout)
            return self._version, len(self._slots)

    def stop_task(self, task_id: int, reason: str = "cancelled") -> bool:
        """Terminate a task's process group if it runs here; True if it did."""
        with self._lock:
            slot = self._slots.get(task_id)
            if slot is None:
                return False
            slot.stop_reason = slot.stop_reason or reason
            run = slot.run
        if run is not None:
            run.cancel(reason)
        return True

    def stop_revoked(self) -> None:
        """Stop runs that were cancelled or whose claim was taken from us (we were paused
        or cut off long enough to be declared dead). Called on every heartbeat."""
        with self._lock:
            running = {tid: slot.task.token for tid, slot in self._slots.items()
                       if not slot.ended}  # a recorded outcome is no revocation
        for task_id, reason in self._repo.revoked_among(running).items():
            log.info("task %s: stopping its run (%s)", task_id, reason,
                     extra={"task_id": task_id})
            self.stop_task(task_id, reason)

    def drain(self, *, grace_s: float) -> None:
        """Take no new work; wait up to ``grace_s`` for running commands, then stop them."""
        with self._lock:
            self._draining = True
            self._version += 1
            self._idle.notify_all()
            self._idle.wait_for(lambda: not self._slots, timeout=grace_s)
            left = list(self._slots)
        for task_id in left:
            self.stop_task(task_id, "worker_lost")
        self._executor.shutdown(wait=True)
        with self._lock:
            self._stopping = True
            self._lease_changed.notify_all()
        self._watchdog.join(timeout=5)
        self._starts.stop()
        self._outcomes.stop()

    def _watch_leases(self) -> None:
        """The fence: kill each run whose lease lapsed, the moment it does. It must not
        die of a surprise (a database outage is when it matters): a failed round is
        logged and the next one follows shortly."""
        with self._lock:
            while not self._stopping:
                now = time.monotonic()
                try:
                    self._fence(self._leases.lapsed(now))
                    self._set_fenced(not self._leases.holds(now))
                    deadline = self._leases.next_deadline(now)
                except Exception:
                    log.exception("fencing runs whose lease lapsed failed; trying again")
                    deadline = now + WATCHDOG_RETRY_S
                self._lease_changed.wait(None if deadline is None else deadline - now)

    def _fence(self, task_ids: list[int]) -> None:
        """Kill these runs now (holding the lock, so no run is spawned meanwhile): their
        lease lapsed. A slot not yet spawning needs nothing: its spawn asks the database
        first, its start being older than the spawn's lease (``_still_ours``)."""
        for task_id in task_ids:
            slot = self._slots.get(task_id)
            if slot is None or slot.run is None:
                continue
            log.warning("task %s: no answer from the database for %.1fs, the lease of its "
                        "run: killing it (fenced; recorded worker_lost when the database "
                        "answers)", task_id, self._leases.hold_s, extra={"task_id": task_id})
            slot.stop_reason = slot.stop_reason or "worker_lost"
            slot.run.kill_now("worker_lost")
            FENCED_RUNS.inc()

    def _set_fenced(self, fenced: bool) -> None:
        if fenced != self._fenced:
            self._fenced = fenced
            if fenced:
                log.warning("no write to the database answered for %.1fs: taking no new "
                            "work until one is", self._leases.hold_s)
            else:
                log.info("writes to the database are answered: taking work")
            self._version += 1  # slot watchers learn we are (or are no longer) full
            self._idle.notify_all()

    def _run_task(self, slot: _Slot) -> None:
        task = slot.task
        try:
            failpoints.pause(failpoints.BEFORE_START)
            started = self._start(slot)
            if started is not None:
                failpoints.pause(failpoints.AFTER_START)
                result = self._execute(slot, started.attempt)
                slot.ended = True
                self._record(task, result)
        except Exception:
            log.exception("task %s: unexpected error in its run", task.id,
                          extra={"task_id": task.id})
        finally:
            with self._lock:
                self._slots.pop(task.id, None)
                self._leases.ended(task.id)
                self._version += 1
                self._idle.notify_all()

    def _start(self, slot: _Slot) -> Started | None:
        """Record the start (fenced) before anything runs; None: do not run it."""
        task = slot.task
        if self._draining:
            self._repo.release([task])  # hand it back: another worker starts it now
            log.info("task %s: handed back unstarted (draining)", task.id,
                     extra={"task_id": task.id})
            return None
        if not allowed(task.command, self._allowlist):
            log.warning("task %s: command refused by this worker's allowlist", task.id,
                        extra={"task_id": task.id})
            self._repo.refuse(task, worker_id=self._worker_id,
                              error="spawn: command not allowed on this worker")
            return None
        if (name := env_refused(task.env, self._allowlist, self._env_allowlist)) is not None:
            log.warning("task %s: env %s refused by this worker's allowlist", task.id, name,
                        extra={"task_id": task.id})
            self._repo.refuse(task, worker_id=self._worker_id,
                              error=f"spawn: env {name} not allowed on this worker")
            return None
        try:
            recorded = self._starts.submit(task)
        except psycopg.Error as exc:
            # Unknown whether the start was committed: never spawn, and record a failed
            # spawn once the database is back (fenced, so harmless if it was not).
            log.warning("task %s: could not record its start: %s", task.id, exc,
                        extra={"task_id": task.id})
            self._record(task, RunResult(succeeded=False, exit_code=None,
                                         error="spawn: database unreachable", output=""))
            return None
        if recorded is None:
            log.info("task %s: start refused (claim lost or cancelled); not run", task.id,
                     extra={"task_id": task.id})
            return None
        started, slot.lease_from = recorded
        with self._lock:
            self._leases.started(task.id, slot.lease_from)
            self._lease_changed.notify_all()
        if started.attempt == 1:
            metrics.REGISTRY.observe(
                "chronosync_task_lateness_seconds",
                "Start lateness of first attempts: started_at - max(scheduled_at, "
                "created_at), so a task submitted for the past is not late by years.",
                max(0.0, started.lateness_s), buckets=metrics.LATENESS_BUCKETS)
        return started

    def _execute(self, slot: _Slot, attempt: int) -> RunResult:
        """Spawn and wait; a failure of ours is a result too, never a task left running."""
        task = slot.task
        try:
            run = CommandRun(
                command=task.command,
                env=command_environment(self._base_env, task, attempt,
                                        worker_id=self._worker_id),
                cwd=self._workdir,
                timeout_s=task.timeout_s,
                kill_grace_s=self._kill_grace_s,
                reaper=self._reaper,
                run_as=self._run_as,
                sandbox=self._sandbox,
                identity=RUN_IDENTITY,
                guard=lambda: self._still_ours(slot),
                spawn_by=(lambda: slot.lease_from + self._lease_s) if self._gated else None,
            )
            with self._lock:
                slot.run = run
                if slot.stop_reason is not None:
                    run.cancel(slot.stop_reason)
            # One INFO line per attempt, at its end: a line costs a busy worker as much
            # as a database write (see bench/README.md).
            log.debug("task %s: attempt %s starting", task.id, attempt,
                      extra={"task_id": task.id})
            began = time.monotonic()
            result = run.run()
            if run.gated_off:
                log.warning("task %s: spawned past its deadline (was the worker frozen or "
                            "starved?); the command did not run then", task.id,
                            extra={"task_id": task.id})
            metrics.REGISTRY.observe("chronosync_run_duration_seconds",
                                     "How long commands ran, spawn to exit.",
                                     time.monotonic() - began,
                                     buckets=metrics.DURATION_BUCKETS)
        except Exception as exc:
            log.exception("task %s: the run failed inside the worker", task.id,
                          extra={"task_id": task.id})
            result = RunResult(succeeded=False, exit_code=None, error=f"spawn: {exc}",
                               output="")
        log.info("task %s: attempt %s ended: %s", task.id, attempt, result.error or "ok",
                 extra={"task_id": task.id})
        outcome = "succeeded" if result.succeeded else (result.error or "failed").split()[0]
        RUNS.inc(outcome=outcome.rstrip(":"))
        return result

    def _record(self, task: ClaimedTask, result: RunResult) -> None:
        outcome = Outcome(succeeded=result.succeeded, exit_code=result.exit_code,
                          error=result.error, output=result.output)
        delay = RECORD_RETRY_FIRST_S
        while True:
            try:
                if not self._outcomes.submit((task, outcome)):
                    log.warning("task %s: outcome fenced off (no longer ours)", task.id,
                                extra={"task_id": task.id})
                    FENCED_WRITES.inc()
                return
            except psycopg.OperationalError as exc:
                log.warning("task %s: cannot record outcome yet (%s); retrying", task.id, exc,
                            extra={"task_id": task.id})
                time.sleep(delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_S)

    def _still_ours(self, slot: _Slot) -> str | None:
        """The run's guard: None while its start's lease holds (or the database confirms
        the attempt is still ours), else why it must not run."""
        task = slot.task
        tries = 0
        while (late := time.monotonic() - slot.lease_from) >= self._lease_s:
            if tries == CONFIRM_TRIES:
                return "spawn: claim not confirmed in time"
            tries += 1
            log.warning("task %s: %.1fs since its start was sent; confirming the claim "
                        "before it runs", task.id, late, extra={"task_id": task.id})
            sent = time.monotonic()
            try:
                revoked = self._repo.confirm_start(task, worker_id=self._worker_id)
            except psycopg.Error as exc:
                log.warning("task %s: cannot confirm its claim: %s", task.id, exc,
                            extra={"task_id": task.id})
                return "spawn: claim not confirmed (database unreachable)"
            if revoked is not None:
                return revoked  # recovered or cancelled while we were away
            slot.lease_from = sent
            with self._lock:  # confirmed under its row lock: a fresh lease, whatever lapsed
                self._leases.started(task.id, sent)
            self.renewed(sent)  # the confirmation moved our heartbeat too
        return None

    def _write_starts(self, tasks: list[ClaimedTask]) -> list[tuple[Started, float] | None]:
        sent = time.monotonic()
        started = self._repo.mark_started(tasks, worker_id=self._worker_id)
        self.renewed(sent)  # a start moves our heartbeat (see mark_started)
        return [(started[t.id], sent) if t.id in started else None for t in tasks]

    def _write_outcomes(self, finished: list[tuple[ClaimedTask, Outcome]]) -> list[bool]:
        written = self._repo.mark_finished(finished)
        return [task.id in written for task, _ in finished]
