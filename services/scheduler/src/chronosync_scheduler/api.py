"""What each HTTP route does, over the task repository and node registry.

Handlers take parsed input and return ``(status, body)``; they raise ``ApiError`` (or the
model's ``ValidationError``) for anything the client got wrong. They know nothing of
sockets or headers: ``http.py`` does the wire.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from chronocore import metrics
from chronocore.cron import Schedule
from chronocore.jobs import job_resource, parse_job
from chronocore.labels import describe, matches
from chronocore.model import (
    STATUSES,
    TaskRow,
    ValidationError,
    check_fields,
    format_timestamp,
    parse_retry,
    parse_submission,
    task_resource,
)
from chronocore.registry import NodeRegistry
from chronocore.repository import (
    HandRun,
    IdempotencyConflict,
    JobBusy,
    JobExists,
    JobRepository,
    RunRefused,
    TaskRepository,
)
from chronocore.tls import TlsFiles
from chronocore.webhooks import (
    WebhookError,
    WebhookRepository,
    check_allowed,
    delivery_resource,
    parse_webhooks,
)
from chronocore.workerclient import cancel_on_worker

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1
MAX_TEXT = 200  # GET /tasks?text=: a search, not a command
MAX_NODE_ID = 255
NODE_ID = re.compile(rf"[A-Za-z0-9._:@-]{{1,{MAX_NODE_ID}}}")
T = TypeVar("T")


@dataclass(frozen=True)
class Raw:
    """A response that is not JSON: the dashboard's files, the metrics text."""

    content_type: str
    data: bytes
    headers: tuple[tuple[str, str], ...] = ()


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


# What the repositories refuse, each a 409 naming the field at fault (if one is).
REFUSED_FIELDS: dict[type[Exception], str | None] = {
    IdempotencyConflict: "idempotency_key", JobExists: "name", JobBusy: None,
    RunRefused: None}


@contextmanager
def refusals() -> Iterator[None]:
    """A repository's refusal, as the API answers it (``REFUSED_FIELDS``)."""
    try:
        yield
    except tuple(REFUSED_FIELDS) as exc:
        raise ApiError(409, str(exc), REFUSED_FIELDS[type(exc)]) from None


def found(value: T | None, what: str) -> T:
    """``value``, or a 404 saying there is no ``what`` ("job 7")."""
    if value is None:
        raise ApiError(404, f"no {what}")
    return value


def whole_number(text: str, *, maximum: int = MAX_ID) -> int | None:
    """``text`` as a whole number up to ``maximum``; None if it is anything else.

    ASCII digits only: str.isdigit() also accepts '²', which int() refuses. The length is
    checked before ``int()``: Python refuses to convert more than 4,300 digits (a
    ValueError, which would otherwise surface as a 500)."""
    if not (text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        return None
    return int(digits)


def _int_param(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = whole_number(raw)
    if value is None:
        raise ValidationError(f"{name} must be a positive whole number", name)
    return value


def _limit(query: dict[str, str]) -> int:
    limit = _int_param(query, "limit")
    if limit is None:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}", "limit")
    return limit


def _worker_param(query: dict[str, str]) -> str | None:
    """``worker``: a node id as GET /nodes gives it (``worker-<host>-<pid>-<hex>``)."""
    raw = query.get("worker")
    if raw is not None and not NODE_ID.fullmatch(raw):
        raise ValidationError("worker must be a node id (letters, digits, '.', '_', ':', "
                              f"'@' or '-'; at most {MAX_NODE_ID} characters)", "worker")
    return raw


def _text_param(query: dict[str, str]) -> str | None:
    """``text``: found anywhere in the command, ignoring case; bounded, as every row the
    list reads is compared with it."""
    raw = query.get("text")
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_TEXT:
        raise ValidationError(f"text must be 1 to {MAX_TEXT} characters", "text")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ValidationError("text must not contain control characters", "text")
    return raw


@dataclass
class Api:
    repo: TaskRepository
    jobs: JobRepository
    registry: NodeRegistry
    ttl_s: float
    tls: TlsFiles | None = None
    hooks: WebhookRepository | None = None
    # CHRONOSYNC_WEBHOOK_ALLOW: the URL prefixes a submission's webhooks may name.
    webhook_allow: tuple[str, ...] = ()

    def _allow_webhooks(self, hooks: list[dict[str, Any]] | None) -> None:
        try:
            check_allowed(hooks, self.webhook_allow)
        except WebhookError as exc:
            raise ValidationError(str(exc), "webhooks") from None

    def schedule(self, body: Any) -> tuple[int, dict[str, Any]]:
        """A one-off task, or a recurring job when the body has ``cron``."""
        with refusals():
            if isinstance(body, dict) and body.get("cron") is not None:
                spec = parse_job(body)
                self._allow_webhooks(spec.webhooks)
                job_id, created = self.jobs.create(spec)
                return (201 if created else 200), self._job(job_id)
            submission = parse_submission(body)
            self._allow_webhooks(submission.webhooks)
            task_id, created = self.repo.submit(submission)
        return (201 if created else 200), self._task(task_id)

    def list_jobs(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        limit = _limit(query)
        rows = self.jobs.list(before=_int_param(query, "before"), limit=limit)
        now = self.jobs.database_now()
        recent = self.jobs.recent_outcomes([r.id for r in rows])
        next_cursor = str(rows[-1].id) if len(rows) == limit else None
        return 200, {"jobs": [job_resource(r, now=now, recent=recent[r.id]) for r in rows],
                     "next": next_cursor}

    def get_job(self, job_id: int) -> tuple[int, dict[str, Any]]:
        return 200, self._job(job_id)

    def patch_job(self, job_id: int, body: Any) -> tuple[int, dict[str, Any]]:
        if isinstance(body, dict) and body.get("webhooks") is not None:
            try:
                self._allow_webhooks(parse_webhooks(body["webhooks"]))
            except WebhookError as exc:
                raise ValidationError(str(exc), "webhooks") from None
        with refusals():
            row = found(self.jobs.update(job_id, body), f"job {job_id}")
        return 200, job_resource(row, now=self.jobs.database_now())

    def delete_job(self, job_id: int) -> tuple[int, dict[str, Any]]:
        with refusals():
            deleted = self.jobs.delete(job_id)
        if not deleted:
            raise ApiError(404, f"no job {job_id}")
        return 204, {}

    def run_job(self, job_id: int, body: Any) -> tuple[int, dict[str, Any]]:
        """An extra occurrence due now (the body, if any, is ``{}``)."""
        if body is not None:
            check_fields(body, frozenset())
        with refusals():
            made = found(self.jobs.run_now(job_id), f"job {job_id}")
        return self._made_by_hand(made)

    def _job(self, job_id: int) -> dict[str, Any]:
        row = found(self.jobs.get(job_id), f"job {job_id}")
        resource = job_resource(row, now=self.jobs.database_now(),
                                recent=self.jobs.recent_outcomes([job_id])[job_id])
        if self.hooks is not None:  # its own events' deliveries (misfires), newest first
            resource["deliveries"] = [delivery_resource(d)
                                      for d in self.hooks.for_job(job_id)]
        return resource

    def list_tasks(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}", "status")
        limit = _limit(query)
        rows = self.repo.list(status=status, job_id=_int_param(query, "job_id"),
                              worker=_worker_param(query), text=_text_param(query),
                              before=_int_param(query, "before"), limit=limit)
        next_cursor = str(rows[-1].id) if len(rows) == limit else None
        waiting = self._waiting(rows)
        return 200, {"tasks": [task_resource(r, None, waiting=waiting.get(r.id))
                               for r in rows],
                     "next": next_cursor}

    def get_task(self, task_id: int) -> tuple[int, dict[str, Any]]:
        return 200, self._task(task_id)

    def cancel_task(self, task_id: int) -> tuple[int, dict[str, Any]]:
        changed = self.repo.cancel(task_id)
        if changed is None:
            task = self._task(task_id)
            if task["status"] in ("succeeded", "failed"):
                raise ApiError(409, f"task {task_id} already {task['status']}")
            return 200, task  # cancelled already: cancelling again changes nothing
        if changed.running_on:
            cancel_on_worker(self.registry, changed.running_on, task_id, tls=self.tls)
        return 200, self._task(task_id)

    def retry_task(self, task_id: int, body: Any) -> tuple[int, dict[str, Any]]:
        """A new task from a finished one; 200 for an idempotent replay."""
        key = parse_retry(body)
        with refusals():
            made = found(self.repo.retry(task_id, idempotency_key=key), f"task {task_id}")
        return self._made_by_hand(made)

    def _made_by_hand(self, made: HandRun) -> tuple[int, dict[str, Any]]:
        for replaced in made.replaced:  # concurrency_policy replace, as a tick does
            log.info("task %s cancelled (replace: a run by hand is due)", replaced.id,
                     extra={"task_id": replaced.id})
            if replaced.running_on:
                cancel_on_worker(self.registry, replaced.running_on, replaced.id, tls=self.tls)
        return (201 if made.created else 200), self._task(made.task_id)

    def list_nodes(self) -> tuple[int, dict[str, Any]]:
        nodes = []
        for row in self.registry.list_nodes(ttl_s=self.ttl_s):
            node = {"id": row.id, "kind": row.kind, "host": row.host, "pid": row.pid,
                    "address": row.address, "state": row.state,
                    "started_at": format_timestamp(row.started_at),
                    "last_heartbeat_at": format_timestamp(row.last_heartbeat_at)}
            if row.kind == "worker":
                node.update(capacity=row.capacity, running=row.running, labels=row.labels)
            nodes.append(node)
        return 200, {"nodes": nodes}

    def metrics(self) -> str:
        """The cluster's metrics: every live node's own, and the database's figures."""
        sources = [({"node": r.id, "kind": r.kind}, r.metrics)
                   for r in self.registry.metrics_sources(ttl_s=self.ttl_s)]
        cluster = metrics.Registry(reserved=frozenset())  # rendered without added labels
        depth = self.repo.queue_depth()
        for state in ("due", "later"):
            cluster.set("chronosync_queue_depth", "Waiting tasks: due and unclaimed, or "
                        "due later.", depth[state], state=state)
        cluster.set("chronosync_queue_due_age_seconds", "How long the oldest due, unclaimed "
                    "task has waited since it was due (or submitted, if later); 0 when "
                    "none waits.", depth["due_age_s"])
        for state, count in self.repo.in_flight().items():
            cluster.set("chronosync_tasks_in_flight", "Claimed tasks not finished.", count,
                        state=state)
        nodes: dict[tuple[str, str], int] = {}
        for node in self.registry.list_nodes(ttl_s=self.ttl_s):
            # A node that stopped cleanly is not one that died: only a death is alerted on.
            state = "stopped" if node.stopped else node.state
            nodes[(node.kind, state)] = nodes.get((node.kind, state), 0) + 1
            if node.kind == "worker" and node.state == "alive":
                for state, value in (("used", node.running),
                                     ("free", max(0, (node.capacity or 0) - node.running))):
                    cluster.set("chronosync_worker_slots", "Command slots of live workers.",
                                value, node=node.id, state=state)
        for (kind, state), count in nodes.items():
            cluster.set("chronosync_nodes", "Nodes seen in the last hour by state: alive, "
                        "draining, dead (heartbeat lapsed) or stopped (cleanly).", count,
                        kind=kind, state=state)
        self._job_health(cluster)
        if self.hooks is not None:
            counts = self.hooks.counts()
            cluster.set("chronosync_webhook_deliveries_pending", "Webhook deliveries not yet "
                        "made (due, or waiting to be tried again).", counts["pending"])
            # A gauge: the history is pruned (the coordinators count give-ups as they go).
            cluster.set("chronosync_webhook_deliveries_given_up", "Webhook deliveries "
                        "given up, in the retained history.", counts["given_up"])
        snapshot = {k: v for k, v in cluster.snapshot().items() if k.startswith("chronosync")}
        return metrics.render([({}, snapshot), *sources])

    def _job_health(self, cluster: metrics.Registry) -> None:
        """One series per job (never per task): what a cron user alerts on. A job's
        period is reckoned once per distinct schedule, so a scrape's cost grows with the
        schedules, not with the jobs that share them; a paused job has none, as it is not
        expected to run."""
        periods: dict[tuple[str, str], float] = {}
        for job in self.jobs.health():
            labels = {"job_id": str(job.id), "job_name": job.name}
            cluster.set("chronosync_job_created_timestamp_seconds",
                        "When a job was submitted, Unix time.", job.created_at.timestamp(),
                        **labels)
            if not job.paused:
                key = (job.cron, job.timezone)
                if key not in periods:
                    periods[key] = Schedule(*key).period_at(job.now).total_seconds()
                cluster.set("chronosync_job_period_seconds",
                            "The time between a job's latest two occurrences by its "
                            "schedule: the period within which it is expected to run "
                            "(unpaused jobs).", periods[key], **labels)
            for reason, count in (("misfire", job.missed_occurrences),
                                  ("forbid", job.forbidden_occurrences)):
                cluster.set("chronosync_job_occurrences_skipped_total",
                            "Occurrences of a job not run: missed while no scheduler ran "
                            "(misfire policy) or skipped while an earlier run was in flight "
                            "(forbid).", count, metric_type="counter", reason=reason,
                            **labels)
            for name, at, text in (
                    ("chronosync_job_last_run_timestamp_seconds", job.last_run_at,
                     "When a job's latest run started, Unix time."),
                    ("chronosync_job_last_success_timestamp_seconds", job.last_success_at,
                     "When a job's latest successful run ended, Unix time.")):
                if at is not None:
                    cluster.set(name, text, at.timestamp(), **labels)

    def ready(self) -> tuple[int, dict[str, Any]]:
        self.registry.list_nodes(ttl_s=self.ttl_s)  # any round trip proves the database
        return 200, {"status": "ready"}

    def _task(self, task_id: int) -> dict[str, Any]:
        row, attempts = found(self.repo.get(task_id), f"task {task_id}")
        resource = task_resource(row, attempts, waiting=self._waiting([row]).get(task_id))
        if row.broadcast_id is not None:
            resource["broadcast"] = self.repo.broadcast_tasks(row.broadcast_id)
        if self.hooks is not None:  # its webhooks' deliveries and how they went
            resource["deliveries"] = [delivery_resource(d)
                                      for d in self.hooks.for_task(task_id)]
        return resource

    def _waiting(self, rows: list[TaskRow]) -> dict[int, str]:
        """Why due targeted tasks still wait, by id: no live worker has their labels
        (judged now, by the database clock, as the claim does)."""
        targeted = [r for r in rows if r.target is not None
                    and r.status in ("scheduled", "retrying")]
        if not targeted:
            return {}
        now = self.jobs.database_now()
        live = [w.labels for w in self.registry.live_workers(ttl_s=self.ttl_s)]
        return {r.id: f"no live worker matches {describe(r.target['labels'])}"
                for r in targeted
                if r.due_at <= now
                and not any(matches(labels, r.target["labels"]) for labels in live)}

