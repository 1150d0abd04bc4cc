"""Group commit: the writes many threads make of one kind travel as one statement.

A worker's slots each record a start and an outcome. One statement and one commit per
task is what caps a busy worker (a round trip each, and PostgreSQL's per-transaction
work), so each kind of write goes through a ``GroupCommit``: a thread hands its item to
``submit`` and blocks until the statement that carried it has committed, then gets its
own result. Callers keep their one-task reasoning (the start is committed before the
command is spawned); the batching is invisible to them.

A batch leaves as soon as the previous one is done, so an idle worker waits for nothing
and a busy one sends everything that queued up meanwhile (lingering ``LINGER_S`` for
more). When a batch fails:

* a lost connection or a deadlock (``psycopg.OperationalError``) fails every item in it,
  and each caller decides, as it would alone (retry the outcome, never spawn the start);
  a deadlock, whose transaction PostgreSQL rolled back whole, is first retried at once;
* any other error is retried item by item, so one bad item cannot fail the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

import psycopg

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# Bounds a statement's size: outcomes carry up to 64 KiB of output each.
MAX_BATCH = 128
# Once busy (the last batch carried more than one item), wait this long for a batch to
# fill before sending it, as PostgreSQL's commit_delay does: batches twice as large for a
# couple of milliseconds. An idle worker, whose batches are single items, never waits.
LINGER_S = 0.002
# A deadlock rolls the whole batch back, so it can simply be sent again.
DEADLOCK_RETRIES = 3


class GroupCommit(Generic[T, R]):
    """``write(items)`` runs one statement for the batch and returns one result per item,
    in order. A service: ``start`` begins the writer thread, ``stop`` writes what is
    queued and ends it (safe twice, or unstarted)."""

    def __init__(self, write: Callable[[list[T]], list[R]], *, name: str,
                 max_batch: int = MAX_BATCH) -> None:
        self._write = write
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[tuple[T, Future[R]]] = []
        self._started = False
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        with self._cond:
            if self._started or self._stopping:
                return
            self._started = True
        self._thread.start()

    def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; returns once it is committed, or
        raises what the statement raised."""
        future: Future[R] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("group commit is stopped")
            if not self._started:
                raise RuntimeError("group commit is not started")
            self._queue.append((item, future))
            self._cond.notify()
        return future.result()

    @property
    def pending(self) -> int:
        """Items waiting for the next statement."""
        with self._cond:
            return len(self._queue)

    @property
    def submit_open(self) -> bool:
        """Whether ``submit`` still takes items (until ``stop``)."""
        with self._cond:
            return not self._stopping

    def stop(self) -> None:
        """Write what is queued, then end the writer thread. Safe to call twice."""
        with self._cond:
            self._stopping = True
            started = self._started
            self._cond.notify()
        if started:
            self._thread.join()

    def _loop(self) -> None:
        busy = False
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                if busy:
                    self._cond.wait_for(lambda: len(self._queue) >= self._max_batch
                                        or self._stopping, timeout=LINGER_S)
                batch = self._queue[: self._max_batch]
                busy = len(batch) > 1
                del self._queue[: self._max_batch]
            self._flush(batch)

    def _flush(self, batch: list[tuple[T, Future[R]]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = self._write_retrying(items)
        except psycopg.OperationalError as exc:
            for _, future in batch:
                future.set_exception(exc)
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            log.warning("a batch of %d writes failed (%s); writing each alone", len(batch), exc)
            for entry in batch:
                self._flush([entry])
        else:
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)

    def _write_retrying(self, items: list[T]) -> list[R]:
        for _ in range(DEADLOCK_RETRIES):
            try:
                return self._write(items)
            except psycopg.errors.DeadlockDetected as exc:
                log.warning("deadlock writing a batch of %d; sending it again: %s",
                            len(items), exc)
        return self._write(items)
