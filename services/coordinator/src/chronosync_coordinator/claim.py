"""The claim loop: claim due tasks in batches, dispatch them, sleep until the next one.

Each step (``run_once``) claims at most as many due tasks as live workers have free
slots, in one ``FOR UPDATE SKIP LOCKED`` statement (so coordinators side by side never
claim one task twice), and dispatches them. With nothing due it sleeps exactly until the
earliest waiting task the claim would take is due (measured by the database clock, and
judged by the claim's own predicate: an occurrence a ``forbid`` job holds back never
makes the loop spin), or until a NOTIFY on ``chronosync_due`` says a task was added,
requeued or retried, or a forbid job's task ended, and at most ``max_idle_s``, the bound
on what a lost notification can cost.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from chronocore import db, failpoints, metrics
from chronocore.lifecycle import Loop
from chronocore.repository import TaskRepository
from chronosync_coordinator.dispatch import FULL_RECHECK_S, Dispatcher

log = logging.getLogger(__name__)

RELEASED = metrics.Counter("chronosync_claims_released_total",
                           "Claimed tasks no worker had room for, handed back.")
CLAIM_STATEMENTS = metrics.Counter("chronosync_claim_statements_total",
                                   "Claim statements run (one per step of the claim loop "
                                   "that found free slots).")

DUE_CHANNEL = "chronosync_due"
# After an error, wait this long before the next step: quick enough to resume soon after
# the database returns, slow enough not to spin.
ERROR_PAUSE_S = 0.5
LISTEN_RETRY_S = 1.0
# Sleep slightly past the due instant rather than before it: claiming a few hundred
# microseconds early would find nothing and cost a round trip.
DUE_SLACK_S = 0.0005


class ClaimLoop(Loop):
    """A service: a ``Loop`` with its LISTEN on a thread of its own; ``stop`` ends the loop
    after its current step (claims taken but not dispatched go back at once) and waits for
    it. ``wake`` (set by the dispatcher when a slot is freed, and by a NOTIFY) makes the
    loop look again at once."""

    def __init__(self, *, repo: TaskRepository, dispatcher: Dispatcher, coordinator_id: str,
                 dsn: str, batch: int, max_idle_s: float,
                 wake: threading.Event | None = None) -> None:
        # Each step says how long to sleep: the interval is only the pause after an error.
        # Not a daemon: the process ends only once a step in flight has handed back what
        # it claimed.
        super().__init__(name="claim-loop", interval_s=ERROR_PAUSE_S, daemon=False,
                         wake=wake)
        self._repo = repo
        self._dispatcher = dispatcher
        self._coordinator_id = coordinator_id
        self._dsn = dsn
        self._batch = batch
        self._max_idle_s = max_idle_s
        self._listener = threading.Thread(target=self._listen, name="listen", daemon=True)

    def _on_start(self) -> None:
        self._listener.start()

    def run_once(self) -> float:
        """Claim and dispatch once; returns how long to sleep before the next step."""
        free = self._dispatcher.free_slots()
        if free <= 0:
            return FULL_RECHECK_S
        CLAIM_STATEMENTS.inc()
        tasks = self._repo.claim_due(coordinator_id=self._coordinator_id,
                                     limit=min(free, self._batch),
                                     free_workers=self._dispatcher.free_workers())
        if tasks:
            metrics.REGISTRY.observe("chronosync_claim_batch_size",
                                     "Tasks taken by one claim statement.", len(tasks),
                                     buckets=metrics.BATCH_BUCKETS)
            failpoints.pause(failpoints.AFTER_CLAIM, self._stop)
            if self._stop.is_set():  # stopping: hand the claims back now, not after a lease
                self._repo.release(tasks)
                return 0.0
            unplaced = self._dispatcher.dispatch(tasks)
            if unplaced:
                RELEASED.inc(len(unplaced))
                self._repo.release(unplaced)
                return FULL_RECHECK_S
            return 0.0
        next_due = self._repo.next_due_in(free_workers=self._dispatcher.free_workers())
        if next_due is None:
            return self._max_idle_s
        return min(max(0.0, next_due + DUE_SLACK_S), self._max_idle_s)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                with db.connect_listener(self._dsn, DUE_CHANNEL) as conn:
                    self._wake.set()  # we may have missed notifications while away
                    while not self._stop.is_set():
                        # The timeout only lets the thread notice a stop.
                        for _ in conn.notifies(timeout=LISTEN_RETRY_S):
                            self._wake.set()
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            self._stop.wait(LISTEN_RETRY_S)
