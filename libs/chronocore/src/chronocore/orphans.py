"""What a run leaves behind once its process group is gone: processes that escaped the
group (``setsid``, ``setpgid``) and zombies. The worker is made a child subreaper
(``PR_SET_CHILD_SUBREAPER``), so every process its commands leave orphaned is re-parented
to the worker instead of init; a sweep then finds them among the worker's children, kills
those that belong to no running command and reaps the dead.

Which children are orphans: the worker's own children are the command shells (and the
reaper process), each registered here right after its spawn. A child not registered may
still be a spawn in flight (forked, not yet registered), so it is only judged at a later
sweep, once every spawn that had begun by its first sighting has finished: a spawn's pid
is registered by then, so one still unregistered was adopted. A subprocess the worker
starts must therefore go through ``begin_spawn``/``end_spawn``, or its child could be
reaped from under ``Popen.wait``.

An adopted process still in a running command's process group, or carrying a running
command's identity (``CHRONOSYNC_TASK_ID``, ``CHRONOSYNC_ATTEMPT`` and
``CHRONOSYNC_WORKER_ID`` in its environment),
is left to that run: it dies with it. Any other is SIGKILLed with its own group, should
it lead one (a ``setsid`` escapee's descendants are in it). A process that both leaves its
group and scrubs its environment is killed as soon as it is adopted.

The orphans of a worker that dies are the reaper process's business
(``chronocore.reaper``): it looks for the identities of the runs it was told of.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections.abc import Iterable

from chronocore.lifecycle import Loop
from chronocore.prctl import become_subreaper

log = logging.getLogger(__name__)

# Between sweeps when nothing is pending: an escapee that closed its output is found
# within this long of its run's end (one that holds the output wakes a sweep at once).
SWEEP_INTERVAL_S = 1.0
# While a child waits for its second sighting, or a kill for its reaping.
SWEEP_SOON_S = 0.05


def children_of(parent: int) -> dict[int, tuple[str, str]]:
    """``{pid: (state, start time)}`` of every process whose parent is ``parent``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 19 and int(fields[1]) == parent:
            found[int(entry)] = (fields[0].decode(), fields[19].decode())
    return found


def environ_of(pid: int) -> set[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return set(f.read().split(b"\0"))
    except OSError:
        return set()


class Orphans(Loop):
    """The worker's side of containment: a ``Loop`` of sweeps, once the worker is made
    their subreaper (``enabled``)."""

    def __init__(self) -> None:
        super().__init__(name="orphans", interval_s=SWEEP_INTERVAL_S, join_s=10)
        self._lock = threading.Lock()
        self._issued = 0  # spawn tickets handed out
        self._in_flight: set[int] = set()
        self._runs: dict[int, frozenset[bytes]] = {}  # registered child -> its identity
        # Adopted-child candidates: (pid, start time) -> tickets issued at first sight.
        self._suspects: dict[tuple[int, str], int] = {}
        # Adopted processes we may not signal (a setuid program a command started): told
        # once, then left alone.
        self._unkillable: set[tuple[int, str]] = set()
        self.enabled = False

    def start(self) -> None:
        self.enabled = become_subreaper()
        if self.enabled:
            super().start()

    def begin_spawn(self) -> int:
        """A child is about to be forked; returns the ticket for ``end_spawn``."""
        with self._lock:
            self._issued += 1
            self._in_flight.add(self._issued)
            return self._issued

    def end_spawn(self, ticket: int, pid: int | None, run: Iterable[str] = ()) -> None:
        """The spawn is over: ``pid`` is the child (None: none was made), ``run`` the
        ``NAME=value`` entries only its processes carry."""
        with self._lock:
            if pid is not None:
                self._runs[pid] = frozenset(entry.encode() for entry in run)
            self._in_flight.discard(ticket)

    def ended(self, pid: int, *, leftovers: bool) -> None:
        """The registered child ``pid`` was reaped; ``leftovers``: something of its run
        may still be running (its output was still held open), so sweep now."""
        with self._lock:
            self._runs.pop(pid, None)
        if leftovers:
            self._wake.set()

    def run_once(self) -> float | None:
        """One sweep; the next follows soon when a child awaits its second sighting, or
        was just killed and awaits reaping."""
        children = children_of(os.getpid())
        with self._lock:  # after the scan: every spawn that forked one of them is counted
            issued = self._issued
            oldest_in_flight = min(self._in_flight, default=issued + 1)
            runs = dict(self._runs)
        live = [run for run in runs.values() if run]
        suspects: dict[tuple[int, str], int] = {}
        soon = False
        for pid, (state, started) in children.items():
            if pid in runs:
                continue
            key = (pid, started)
            first = suspects[key] = self._suspects.get(key, issued)
            if key not in self._suspects or oldest_in_flight <= first:
                soon = True  # maybe a spawn of ours in flight: judge it next time
                continue
            if state in ("Z", "X"):
                self._reap(pid)
                continue
            try:
                pgid = os.getpgid(pid)
            except ProcessLookupError:
                continue
            if pgid in runs:
                continue  # still in a running command's group: dies with it
            environ = environ_of(pid)
            if any(run <= environ for run in live) or key in self._unkillable:
                continue  # escaped its group but not its run: killed when the run ends
            log.warning("killing process %d: left behind by a finished command", pid)
            if self._kill(pid, pgid):
                soon = True
            else:
                self._unkillable.add(key)
        self._suspects = suspects
        self._unkillable &= suspects.keys()
        return SWEEP_SOON_S if soon else None

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass

    @staticmethod
    def _kill(pid: int, pgid: int) -> bool:
        """SIGKILL it (and its group, if it leads one); False if we may not."""
        try:
            if pgid == pid and pgid != os.getpgrp():
                os.killpg(pgid, signal.SIGKILL)  # it leads its own group: all of it
            else:
                os.kill(pid, signal.SIGKILL)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                log.warning("could not kill left-behind process %d: %s", pid, exc)
                return False
        return True
