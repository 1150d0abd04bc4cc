"""Commands die with their worker (SPEC §4), so a retry never runs beside its orphan.

Each worker starts one small reaper process in a session of its own and tells it, through
a pipe, the process group of every command it spawns and every one that ended. The worker
is the pipe's only writer: when the worker dies, even by SIGKILL, the kernel closes the
pipe, the reaper reads end-of-file and SIGKILLs every group still listed, then exits.
A parent-death signal would only reach the shell, not the children it started.

A group is only known once the command is spawned, so a worker killed between the spawn
and its report would leave that command running unattended. Before spawning, the worker
therefore names the run by environment entries only its processes carry (the task id,
the attempt and the worker's id); a run named but never reported is looked for in every
process's environment when the pipe closes, and its group killed.

A command may also leave its group (``setsid``) to outlive it. While the worker lives,
it finds such processes itself (``chronocore.orphans``: it is their subreaper). When it
dies, the reaper looks for every process carrying the identity of a run it was told of,
running or ended lately (one the worker may not have swept yet), and kills its group too.

Run as ``python -m chronocore.reaper``; the protocol is one line per event: ``?ENTRIES``
(a run is about to be spawned; entries ``NAME=value`` separated by spaces), ``+PGID
ENTRIES`` (it was, as this group), ``!ENTRIES`` (its spawn failed), ``-PGID`` (it ended).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable

from chronocore.orphans import Orphans
from chronocore.prctl import make_undumpable

log = logging.getLogger(__name__)


class Reaper:
    """The worker's side: start the reaper, report groups, close it on a clean stop.

    A service: ``start`` starts the reaper process (and the search for orphans); ``stop``
    closes its pipe, a clean stop, and waits for it. Safe to stop twice, or unstarted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.orphans = Orphans()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._proc is not None or self._stopped:
                return
            self.orphans.start()
            ticket = self.orphans.begin_spawn()
            pid = None
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "chronocore.reaper"],
                    stdin=subprocess.PIPE, start_new_session=True, close_fds=True,
                )
                pid = self._proc.pid
            finally:
                self.orphans.end_spawn(ticket, pid)

    def expect(self, run: tuple[str, ...]) -> int:
        """A run is about to be spawned; ``run`` holds ``NAME=value`` entries of its
        environment that no other process carries (empty: it has none). Returns the
        ticket for ``spawned`` or ``forget``."""
        ticket = self.orphans.begin_spawn()
        if run:
            self._send(f"?{_entries(run)}\n")
        return ticket

    def spawned(self, ticket: int, pid: int, run: tuple[str, ...]) -> None:
        """The expected run is the worker's child ``pid`` now (reported to the reaper
        process by ``watch``)."""
        self.orphans.end_spawn(ticket, pid, run)

    def watch(self, pgid: int, run: tuple[str, ...]) -> None:
        """The run was spawned as group ``pgid`` (``run``: as named to ``expect``, or
        empty when it was not)."""
        self._send(f"+{pgid} {_entries(run)}\n")

    def forget(self, ticket: int, run: tuple[str, ...]) -> None:
        """The expected run was never spawned."""
        self.orphans.end_spawn(ticket, None)
        if run:
            self._send(f"!{_entries(run)}\n")

    def reaped(self, pid: int, *, leftovers: bool) -> None:
        """The run's shell ``pid`` was waited for; ``leftovers``: its output is still
        held open by something it left (look for escapees now)."""
        self.orphans.ended(pid, leftovers=leftovers)

    def unwatch(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def stop(self) -> None:
        """A clean stop: the reaper kills what is left (nothing, after a drain) and exits."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            proc = self._proc
            if proc is None:
                return
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
        proc.wait(timeout=10)
        self.orphans.ended(proc.pid, leftovers=False)
        self.orphans.stop()

    def _send(self, line: str) -> None:
        with self._lock:  # never write to a descriptor number stop() gave back
            if self._proc is None or self._proc.stdin is None:
                log.error("the reaper is not running: commands may outlive this worker")
                return
            try:
                # One write(2) of a short line: atomic on a pipe, nothing to flush.
                os.write(self._proc.stdin.fileno(), line.encode())
            except (BrokenPipeError, ValueError):
                log.error("the reaper is gone: commands may outlive this worker")


def _entries(run: tuple[str, ...]) -> str:
    if any("=" not in entry or any(c.isspace() for c in entry) for entry in run):
        raise ValueError(f"run entries must be NAME=value without spaces: {run!r}")
    return " ".join(run)


# A process found by its environment may still have been between fork and exec at the
# first look (it then shows the worker's environment): look twice.
SEARCH_AGAIN_AFTER_S = 0.5


# Ended runs whose identities are still looked for when the worker dies: their escapees
# are normally killed by the worker within a second of the end, so the latest suffice.
ENDED_KEPT = 1024


def processes_of(runs: Iterable[frozenset[bytes]]) -> list[int]:
    """Pids of processes whose environment holds every entry of one of ``runs``."""
    by_entry: dict[bytes, list[frozenset[bytes]]] = {}
    for run in runs:
        if run:  # an empty identity would match every process
            by_entry.setdefault(min(run), []).append(run)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = set(f.read().split(b"\0"))
        except OSError:
            continue  # gone, or not ours to read
        if any(run <= environ for item in environ for run in by_entry.get(item, ())):
            found.append(int(entry))
    return found


def _kill_group_of(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def main() -> int:
    # A command running as the worker's user must not ptrace us.
    make_undumpable()
    # Our parent's Ctrl-C or SIGTERM must not stop us before the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: dict[int, frozenset[bytes]] = {}  # running: group -> identity
    expected: set[frozenset[bytes]] = set()  # named, not yet reported as spawned
    ended: deque[frozenset[bytes]] = deque(maxlen=ENDED_KEPT)
    for raw in sys.stdin.buffer:
        kind, line = raw[:1], raw[1:].strip()
        if kind == b"?" and line:  # an empty name would match every process
            expected.add(frozenset(line.split()))
        elif kind == b"+":
            pgid, *run = line.split()
            groups[int(pgid)] = frozenset(run)
            expected.discard(frozenset(run))
        elif kind == b"!":
            expected.discard(frozenset(line.split()))
        elif kind == b"-":
            run = groups.pop(int(line), frozenset())
            if run:
                ended.append(run)
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    # What left its group (setsid), and runs spawned but not yet reported: by identity.
    runs = expected | set(groups.values()) | set(ended)
    if any(runs):
        for pid in processes_of(runs):
            _kill_group_of(pid)
        time.sleep(SEARCH_AGAIN_AFTER_S)
        for pid in processes_of(runs):
            _kill_group_of(pid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
