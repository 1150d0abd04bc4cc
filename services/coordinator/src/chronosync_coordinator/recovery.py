"""Recovery of a dead node's work, run by every coordinator once per heartbeat.

Safe when all coordinators sweep at once: each step is one UPDATE whose conditions are
re-checked under the row lock, so a task is recovered by exactly one of them.

* Claimed but never started within the lease (its coordinator or worker died between
  claim and start): back to the queue at once, with the token cleared; the old holder's
  late start is fenced off.
* Started on a worker that is dead by the database clock (no heartbeat for the TTL):
  ``at_most_once`` -> failed with ``worker_lost``, never run again; ``at_least_once``
  -> retried after an exponential backoff while attempts remain.
* A broadcast's task (pinned to one worker) not started when its worker died: failed
  with ``worker_lost``; it runs on no other worker.
* Due with a target no live worker matches: set aside (``unmatched_at``), out of the
  claim's way, and brought back by the first sweep that sees a live worker matching it.

A sweeper judges other nodes dead only after it has itself been connected for a whole
TTL plus the pool's wait: after a database outage every heartbeat is stale, and a live
worker may need that long to be seen again. A sweeper that was itself frozen (SIGSTOP, a
paused VM) may have slept through such an outage without failing a beat: a beat later
than its interval plus slack (by its monotonic clock) restarts that wait too.
Requeueing unstarted claims needs no such care, being fenced.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from chronocore import metrics
from chronocore.db import POOL_WAIT_S
from chronocore.registry import BEAT_GAP_SLACK_S, NodeRegistry
from chronocore.repository import TaskRepository

log = logging.getLogger(__name__)

RECOVERIES = metrics.Counter(
    "chronosync_recoveries_total",
    "Tasks recovered from dead nodes, by what became of them.",
    *({"reason": reason} for reason in ("redispatched", "retried", "worker_lost")))
PRUNED = metrics.Counter("chronosync_tasks_pruned_total",
                         "Finished tasks deleted by the retention policy.")


def sweep(repo: TaskRepository, *, ttl_s: float, connected_for: Callable[[], float],
          sweeper: str, beat_s: float) -> None:
    """``connected_for`` is read just before judging, not when the sweep began: a
    process frozen in between must not judge with what it knew before the freeze. A
    freeze after that read, before the statement runs, no check here can see: the
    statement itself requires the ``sweeper``'s own heartbeat (the beat this sweep
    follows) to be younger than a beat interval plus slack."""
    for task_id in repo.requeue_stale_claims(lease_s=ttl_s):
        log.warning("recovery: task %s claimed but never started; back to the queue",
                    task_id, extra={"task_id": task_id})
        RECOVERIES.inc(reason="redispatched")
    # Setting aside is undone by the next sweep that sees a matching worker, so it needs
    # no wait after an outage; failing a pinned task cannot be undone, so it waits.
    sorted_out = repo.sort_targeted(
        ttl_s=ttl_s, judge_dead=connected_for() >= ttl_s + POOL_WAIT_S)
    for task_id in sorted_out["restored"]:
        log.info("task %s: a live worker matches its target now", task_id,
                 extra={"task_id": task_id})
    for task_id in sorted_out["set_aside"]:
        log.info("task %s: no live worker matches its target; set aside until one does",
                 task_id, extra={"task_id": task_id})
    for task_id in sorted_out["failed"]:
        log.warning("recovery: task %s: its broadcast's worker died before starting it; "
                    "failed as worker_lost", task_id, extra={"task_id": task_id})
        RECOVERIES.inc(reason="worker_lost")
    if connected_for() < ttl_s + POOL_WAIT_S:
        return
    for lost in repo.recover_lost_runs(ttl_s=ttl_s, sweeper=sweeper,
                                       fresh_s=beat_s + BEAT_GAP_SLACK_S):
        log.warning("recovery: task %s lost its worker; %s", lost.task_id,
                    "retrying" if lost.retry else "failed as worker_lost",
                    extra={"task_id": lost.task_id})
        RECOVERIES.inc(reason="retried" if lost.retry else "worker_lost")


# Retention: each sweep deletes at most this many old finished tasks, so pruning a long
# history is spread over many short statements and never holds up claims.
PRUNE_BATCH = 500


def prune(repo: TaskRepository, registry: NodeRegistry, *, retention_s: float) -> int:
    """Delete old finished tasks, one small batch per sweep (any coordinator may), and
    the rows of nodes stopped or dead for as long (each start of a node adds one)."""
    pruned = repo.prune_finished(retention_s=retention_s, limit=PRUNE_BATCH)
    if pruned:
        PRUNED.inc(pruned)
    registry.prune_nodes(retention_s=retention_s, limit=PRUNE_BATCH)
    return pruned
