"""Failpoints: pauses at the instants where a node's death matters most, so the failover
tests can kill a real process exactly there instead of hoping to hit the window.

Off unless the environment names them; production never sets these variables.

- CHRONOSYNC_FAILPOINT_AFTER_CLAIM_S: a coordinator pauses between claim and dispatch.
- CHRONOSYNC_FAILPOINT_BEFORE_START_S: a worker pauses between accepting a task and
  recording its start.
- CHRONOSYNC_FAILPOINT_AFTER_START_S: a worker pauses between recording a start and
  spawning the command.
- CHRONOSYNC_FAILPOINT_BEFORE_SPAWN_S: a worker pauses between its last check that the
  claim is still its own and the spawn (the command's gate must then refuse to run).
- CHRONOSYNC_FAILPOINT_AFTER_SPAWN_S: a worker pauses between spawning a command and
  reporting its process group to the reaper.
- CHRONOSYNC_FAILPOINT_MID_MATERIALIZE_S: a scheduler pauses inside a materialization
  step, between taking jobs and making their occurrences (only in a step that took one).
- CHRONOSYNC_FAILPOINT_DISPATCH_REPLY_S: a worker pauses between accepting a dispatch and
  answering it (a coordinator's call may time out although the worker accepted).
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

AFTER_CLAIM = "CHRONOSYNC_FAILPOINT_AFTER_CLAIM_S"
BEFORE_START = "CHRONOSYNC_FAILPOINT_BEFORE_START_S"
AFTER_START = "CHRONOSYNC_FAILPOINT_AFTER_START_S"
BEFORE_SPAWN = "CHRONOSYNC_FAILPOINT_BEFORE_SPAWN_S"
AFTER_SPAWN = "CHRONOSYNC_FAILPOINT_AFTER_SPAWN_S"
MID_MATERIALIZE = "CHRONOSYNC_FAILPOINT_MID_MATERIALIZE_S"
DISPATCH_REPLY = "CHRONOSYNC_FAILPOINT_DISPATCH_REPLY_S"


# Read once: a process's failpoints are fixed when it starts, and pause() is on every
# task's path.
_SECONDS = {name: float(os.environ.get(name) or 0)
            for name in (AFTER_CLAIM, BEFORE_START, AFTER_START, BEFORE_SPAWN, AFTER_SPAWN,
                         MID_MATERIALIZE, DISPATCH_REPLY)}


def pause(name: str, stop: threading.Event | None = None) -> None:
    """Sleep as long as the failpoint says (interrupted by ``stop``), if it is set."""
    seconds = _SECONDS[name]
    if seconds > 0:
        log.warning("failpoint %s: pausing %.1fs", name, seconds)
        (stop or threading.Event()).wait(seconds)
