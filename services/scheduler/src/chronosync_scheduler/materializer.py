"""The materializer: every scheduler turns recurring jobs' occurrences into tasks a short
horizon ahead, and applies the jobs' concurrency policies as occurrences fall due.

All schedulers run it at once and are equal: jobs are shared out with SKIP LOCKED and
each occurrence is one task by a unique key, so no leader is needed and none can be lost.
"""

from __future__ import annotations

import logging

from chronocore import metrics
from chronocore.lifecycle import Loop
from chronocore.registry import NodeRegistry
from chronocore.repository import JobRepository
from chronocore.tls import TlsFiles
from chronocore.workerclient import cancel_on_worker

log = logging.getLogger(__name__)

# How often a scheduler looks for occurrences to make and policies to apply: well under
# a second, so a per-second job is made in time and a pause or forbid acts within one.
STEP_EVERY_S = 0.2


SKIPPED = metrics.Counter(
    "chronosync_occurrences_skipped_total",
    "Occurrences not run (or cut short) because of a job's policy.",
    *({"policy": policy} for policy in ("misfire", "forbid", "replace")))
MADE = metrics.Counter("chronosync_occurrences_made_total",
                       "Recurring jobs' occurrences made into tasks.")


class Materializer(Loop):
    def __init__(self, *, jobs: JobRepository, registry: NodeRegistry,
                 horizon_s: float, tls: TlsFiles | None) -> None:
        super().__init__(name="materializer", interval_s=STEP_EVERY_S, first_wait=True,
                         join_s=10)
        self._jobs = jobs
        self._tls = tls
        self._registry = registry
        self._horizon_s = horizon_s

    def run_once(self) -> None:
        for made in self._jobs.materialize(horizon_s=self._horizon_s):
            MADE.inc(len(made.tasks))
            if made.skipped:
                log.warning("job %s: %d missed occurrences skipped by its misfire policy",
                            made.job_id, made.skipped)
                SKIPPED.inc(made.skipped, policy="misfire")
        skipped, replaced = self._jobs.enforce_concurrency()
        for task in skipped:
            log.info("job %s: task %s skipped (forbid: an earlier run is in flight)",
                     task.job_id, task.id, extra={"task_id": task.id})
            SKIPPED.inc(policy="forbid")
        for task in replaced:
            log.info("job %s: task %s cancelled (replace: a later run is due)",
                     task.job_id, task.id, extra={"task_id": task.id})
            SKIPPED.inc(policy="replace")
            if task.running_on:
                cancel_on_worker(self._registry, task.running_on, task.id, tls=self._tls)
