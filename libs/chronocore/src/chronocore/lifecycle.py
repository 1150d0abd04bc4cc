"""The life of a node's long-running parts (see ``chronocore.node``): ``Lifecycle``, the
guard of a service's ``start`` and ``stop``, and ``Loop``, the service most parts are: one
step, ``run_once()``, repeated on a thread of its own until stopped.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import ClassVar

import psycopg


class Lifecycle:
    """The guard of a service's ``start`` and ``stop``: ``begin()`` is True for the first
    start only, and never once a stop came; ``end()`` is None for every stop but the
    first, else whether the service was started (one never started has nothing to stop).
    ``lock``: the service's own, when its state changes with these under one lock."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self._lock = lock or threading.Lock()
        self.started = False
        self.stopped = False

    def begin(self) -> bool:
        with self._lock:
            if self.started or self.stopped:
                return False
            self.started = True
            return True

    def end(self) -> bool | None:
        with self._lock:
            if self.stopped:
                return None
            self.stopped = True
            return self.started


class Loop:
    """A service that repeats ``run_once()`` on a thread named ``name`` until ``stop()``.

    A step returns the wait before the next (0: at once), or None for ``interval_s`` (give
    or take the ``jitter`` fraction, so nodes spread out); the first step waits it too with
    ``first_wait``. ``wake()`` ends a wait early. A step's error never ends the loop: a
    ``TRANSIENT`` one (the database's) is logged as a warning, any other with its traceback,
    and the next step comes after the interval. ``stop()`` waits for the step in flight (at
    most ``join_s``); ``_on_start`` and ``_on_stop`` are a subclass's additions to a start
    and a stop that happened (before the thread starts, after it ended). ``daemon``: False
    for a loop whose step in flight must end before the process does.
    """

    TRANSIENT: ClassVar[tuple[type[Exception], ...]] = (psycopg.Error,)

    def __init__(self, *, name: str, interval_s: float, jitter: float = 0.0,
                 first_wait: bool = False, daemon: bool = True, join_s: float | None = None,
                 wake: threading.Event | None = None) -> None:
        self._interval_s = interval_s
        self._jitter = jitter
        self._first_wait = first_wait
        self._join_s = join_s
        self._stop = threading.Event()
        self._wake = wake if wake is not None else threading.Event()
        self._life = Lifecycle()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=daemon)
        self._log = logging.getLogger(type(self).__module__)

    def run_once(self) -> float | None:
        """One step; returns the wait before the next (None: the interval)."""
        raise NotImplementedError

    def start(self) -> None:
        if self._life.begin():
            self._on_start()
            self._thread.start()

    def stop(self) -> None:
        started = self._life.end()
        self._stop.set()
        self._wake.set()
        if not started:
            return
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(self._join_s)
        self._on_stop()

    def wake(self) -> None:
        """Step now rather than at the end of the wait."""
        self._wake.set()

    def _on_start(self) -> None:
        pass

    def _on_stop(self) -> None:
        pass

    def _interval(self) -> float:
        return self._interval_s * random.uniform(1 - self._jitter, 1 + self._jitter)

    def _loop(self) -> None:
        wait = self._interval() if self._first_wait else 0.0
        while True:
            self._wake.wait(wait)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                wait = self.run_once()
            except self.TRANSIENT as exc:
                self._log.warning("%s: step failed, trying again: %s", self._thread.name, exc)
                wait = None
            except Exception:
                self._log.exception("%s: step failed", self._thread.name)
                wait = None
            if wait is None:
                wait = self._interval()
