"""A worker's own lease on its runs: how a worker cut off from PostgreSQL fences itself.

The cluster takes a run back (``recover_lost_runs``) once the worker's ``last_heartbeat_at``
is older than the TTL by the database clock. A worker that cannot reach the database
cannot hear of that, so it must stop its commands by itself before it can happen: every
write that moves its heartbeat (a beat, a start, a start's confirmation) is sent at a
known instant of the worker's monotonic clock, and the database stamps it no earlier, so
no sweep can judge the worker dead until a TTL after that instant. Each run holds a lease
until ``sent + hold_s`` of the latest such write; when it lapses with no newer write
answered, the worker SIGKILLs the run's process group (and records it ``worker_lost``,
fenced by the claim token, once the database answers again).

``hold_s`` is the TTL minus a safety margin (``margin_s``) that covers:

* clock rates: the TTL is measured by the database's clock, the lease by the worker's
  monotonic clock; CLOCK_RATE_SLACK of the TTL is far more than an NTP-disciplined clock
  drifts (500 ppm at most) and covers an undisciplined one;
* acting on time: the watchdog thread waking on a busy host (a held GIL, a starved CPU)
  and the kill reaching the group, KILL_SLACK_S.

Sweep timing needs nothing more: a sweep compares two database timestamps, the beat's
(taken after the worker sent it) and its own ``now()``, and sweeps only run a heartbeat
interval apart, which can only make them later. A retry starts later still (backoff,
claim, dispatch, start).

A write answered after the lease it would extend had lapsed extends nothing: the sweep
may have run in between, so those runs are fenced all the same. The write's own start
(``started``) still gives its run a fresh lease: that start committed, so no sweep can
have recovered it before.

Everything here is pure bookkeeping on instants the caller passes (``time.monotonic()``);
the worker's slot pool owns the thread that acts on it.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

CLOCK_RATE_SLACK = 0.01
KILL_SLACK_S = 0.2


def margin_s(ttl_s: float) -> float:
    """The safety margin for a TTL: never more than 40% of it, so a run's lease always
    outlasts the half-TTL within which a start may be spawned without asking again."""
    return min(ttl_s * CLOCK_RATE_SLACK + KILL_SLACK_S, ttl_s * 0.4)


class Leases(Generic[K]):
    """The lease of each run (keyed by task id) and the worker's own."""

    def __init__(self, *, ttl_s: float) -> None:
        self.hold_s = ttl_s - margin_s(ttl_s)
        self._runs: dict[K, float] = {}
        self._until = float("-inf")

    def renewed(self, sent: float, *, now: float) -> list[K]:
        """A write that moves the heartbeat, sent at ``sent``, was answered at ``now``.
        Extends every run lease still holding; returns (and forgets) those that had
        lapsed before the answer came: the caller fences them."""
        until = sent + self.hold_s
        lapsed = [key for key, at in self._runs.items() if at <= now]
        for key in lapsed:
            del self._runs[key]
        for key, at in self._runs.items():
            self._runs[key] = max(at, until)
        self._until = max(self._until, until)
        return lapsed

    def started(self, key: K, sent: float) -> None:
        """A run's start (or its confirmation), sent at ``sent``, was committed."""
        self._runs[key] = max(self._runs.get(key, float("-inf")), sent + self.hold_s)

    def ended(self, key: K) -> None:
        self._runs.pop(key, None)

    def lapsed(self, now: float) -> list[K]:
        """Runs whose lease ran out by ``now``, forgotten here: the caller fences them."""
        lapsed = [key for key, at in self._runs.items() if at <= now]
        for key in lapsed:
            del self._runs[key]
        return lapsed

    def holds(self, now: float) -> bool:
        """Whether the worker itself still counts as alive in the database."""
        return now < self._until

    def next_deadline(self, now: float) -> float | None:
        """The next instant after ``now`` something lapses (a run's lease, or the
        worker's own); None if nothing will."""
        ahead = [at for at in (*self._runs.values(), self._until) if at > now]
        return min(ahead) if ahead else None
