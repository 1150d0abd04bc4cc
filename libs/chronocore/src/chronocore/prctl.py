"""The two Linux process controls ChronoSync relies on (``prctl(2)``), through libc.

``PR_SET_DUMPABLE`` 0: a process's /proc/<pid>/{environ,mem,fd,...} become root's and it
cannot be ptraced by its own uid, so a command running as the node's user cannot read the
environment the node started with (which /proc keeps even after ``os.environ`` lost the
secrets). ``PR_SET_CHILD_SUBREAPER``: descendants orphaned below a worker become its
children rather than init's (``chronocore.orphans``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError as exc:  # not Linux, or no libc to load
        log.warning("prctl unavailable: %s", exc)
        return False
    if libc.prctl(option, value, 0, 0, 0) != 0:
        log.warning("prctl(%d, %d) failed: %s", option, value,
                    os.strerror(ctypes.get_errno()))
        return False
    return True


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux 3.4+)."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def make_undumpable() -> bool:
    """No core dumps, and no reading of this process's /proc files by its own uid."""
    return _prctl(PR_SET_DUMPABLE, 0)
