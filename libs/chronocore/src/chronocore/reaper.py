"""Commands die with their worker (SPEC §4), so a retry never runs beside its orphan.

Each worker starts one small reaper process in a session of its own and tells it, through
a pipe, the process group of every command it spawns and every one that ended. The worker
is the pipe's only writer: when the worker dies, even by SIGKILL, the kernel closes the
pipe, the reaper reads end-of-file and SIGKILLs every group still listed, then exits.
A parent-death signal would only reach the shell, not the children it started.

Run as ``python -m chronocore.reaper``; the protocol is one line per event, ``+PGID`` or
``-PGID``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger(__name__)


class Reaper:
    """The worker's side: start the reaper, report groups, close it on a clean stop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "chronocore.reaper"],
            stdin=subprocess.PIPE, start_new_session=True, close_fds=True,
        )

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}\n")

    def unwatch(self, pgid: int) -> None:
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """A clean stop: the reaper kills what is left (nothing, after a drain) and exits."""
        with self._lock:
            if self._proc.stdin is not None and not self._proc.stdin.closed:
                self._proc.stdin.close()
        self._proc.wait(timeout=10)

    def _send(self, line: str) -> None:
        assert self._proc.stdin is not None
        with self._lock:  # never write to a descriptor number close() gave back
            try:
                # One write(2) of a short line: atomic on a pipe, nothing to flush.
                os.write(self._proc.stdin.fileno(), line.encode())
            except (BrokenPipeError, ValueError):
                log.error("the reaper is gone: commands may outlive this worker")


def main() -> int:
    # Our parent's Ctrl-C or SIGTERM must not stop us before the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line[:1] == b"+":
            groups.add(int(line[1:]))
        elif line[:1] == b"-":
            groups.discard(int(line[1:]))
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
