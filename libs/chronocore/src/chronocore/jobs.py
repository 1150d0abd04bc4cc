"""Recurring jobs: what a client may submit or change, how a job is shown, and the plan
of which occurrences become tasks in one materialization step.

Materialization (``plan``) is pure: given a job's ``next_run_at`` (the next occurrence not
yet a task) and the database's ``now``, it returns the occurrences to insert and the new
``next_run_at``. Occurrences up to ``now + horizon`` are made ahead of time, so even a
per-second job starts on time. Occurrences already past by more than
``MISFIRE_TOLERANCE`` when found were missed (every scheduler was down): the misfire
policy decides what becomes of them, Kubernetes-style:

- ``run_once`` (default): one catch-up run, the latest missed occurrence, if it is within
  ``starting_deadline_s`` (no deadline: always);
- ``skip``: none;
- ``run_all``: every missed occurrence within the deadline, at most ``max_catchup``
  (the latest ones).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from chronocore.cron import Schedule, parse_schedule
from chronocore.model import (
    SUBMISSION_FIELDS,
    ValidationError,
    check_fields,
    fingerprint,
    format_timestamp,
    parse_common,
    without_empty_target,
)
from chronocore.webhooks import shown

CONCURRENCY_POLICIES = ("allow", "forbid", "replace")
MISFIRE_POLICIES = ("run_once", "skip", "run_all")
DEFAULT_MAX_CATCHUP = 100
MAX_CATCHUP_LIMIT = 10_000
# Found this late, an occurrence was missed, not merely picked up a little late.
MISFIRE_TOLERANCE = timedelta(seconds=1)
# The most occurrences one step makes for one job (a per-second job over a long
# horizon); the rest come in the next step.
MAX_OCCURRENCES_PER_STEP = 1000
# Counting skipped occurrences stops here (a per-second job down for days).
MAX_COUNTED_MISSES = 100_000

JOB_ONLY_FIELDS = frozenset(
    {"concurrency_policy", "misfire_policy", "starting_deadline_s", "max_catchup", "paused"}
)
# scheduled_at is accepted here only to be refused with a message that explains it.
JOB_FIELDS = SUBMISSION_FIELDS | JOB_ONLY_FIELDS
PATCHABLE_FIELDS = JOB_FIELDS - {"idempotency_key"}


@dataclass(frozen=True, kw_only=True)
class JobSpec:
    command: str
    schedule: Schedule
    delivery: str
    max_attempts: int
    timeout_s: float | None
    name: str | None
    idempotency_key: str | None
    env: dict[str, str] = field(default_factory=dict)
    concurrency_policy: str = "allow"
    misfire_policy: str = "run_once"
    starting_deadline_s: float | None = None
    max_catchup: int = DEFAULT_MAX_CATCHUP
    paused: bool = False
    target: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] | None = None

    def request_hash(self) -> str:
        return fingerprint(without_empty_target(
            {**asdict(self), "schedule": [self.schedule.expression, self.schedule.timezone]}))


def _choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value is None:
        return choices[0]
    if value not in choices:
        raise ValidationError(f"{name} must be one of {', '.join(choices)}", name)
    return value


def parse_job(body: object, *, fields: frozenset[str] = JOB_FIELDS) -> JobSpec:
    """Validate a ``POST /schedule`` body with ``cron`` (or a job merged with a PATCH)."""
    body = check_fields(body, fields)
    if body.get("scheduled_at") is not None:
        raise ValidationError("scheduled_at is for one-off tasks; a job runs on its cron",
                              "scheduled_at")
    common = parse_common(body)
    schedule = parse_schedule(body.get("cron"), body.get("timezone"))
    deadline = body.get("starting_deadline_s")
    if deadline is not None and (isinstance(deadline, bool)
                                 or not isinstance(deadline, int | float)
                                 or not 0 < deadline <= 366 * 86400):
        raise ValidationError("starting_deadline_s must be a number of seconds above 0",
                              "starting_deadline_s")
    max_catchup = body.get("max_catchup", DEFAULT_MAX_CATCHUP)
    if (isinstance(max_catchup, bool) or not isinstance(max_catchup, int)
            or not 1 <= max_catchup <= MAX_CATCHUP_LIMIT):
        raise ValidationError(f"max_catchup must be a whole number from 1 to "
                              f"{MAX_CATCHUP_LIMIT}", "max_catchup")
    paused = body.get("paused", False)
    if not isinstance(paused, bool):
        raise ValidationError("paused must be true or false", "paused")
    policy = _choice(body, "concurrency_policy", CONCURRENCY_POLICIES)
    if policy == "forbid" and common["target"] is not None and common["target"].get("all"):
        # An occurrence is then several tasks at once, which forbid would hold apart.
        raise ValidationError("a target with all: true takes concurrency_policy allow or "
                              "replace, not forbid", "target")
    return JobSpec(
        schedule=schedule,
        concurrency_policy=policy,
        misfire_policy=_choice(body, "misfire_policy", MISFIRE_POLICIES),
        starting_deadline_s=None if deadline is None else float(deadline),
        max_catchup=max_catchup,
        paused=paused,
        **common,
    )


@dataclass(frozen=True, kw_only=True)
class JobRow:
    """A job as stored (the columns the API shows and a PATCH starts from)."""

    id: int
    name: str | None
    command: str
    cron: str
    timezone: str
    delivery: str
    max_attempts: int
    timeout_s: float | None
    env: dict[str, str]
    concurrency_policy: str
    misfire_policy: str
    starting_deadline_s: float | None
    max_catchup: int
    idempotency_key: str | None
    paused_at: datetime | None
    next_run_at: datetime
    created_at: datetime
    updated_at: datetime
    target: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] | None = None  # with their secrets: never shown


# What a PATCH starts from: the row's submitted fields, as a submission names them.
SUBMITTED = ("command", "cron", "timezone", "name", "delivery", "max_attempts", "timeout_s",
             "env", "concurrency_policy", "misfire_policy", "starting_deadline_s",
             "max_catchup", "target", "webhooks")


def patched(row: JobRow, patch: object) -> JobSpec:
    """A job row with a PATCH body applied, validated as a whole."""
    patch = check_fields(patch, PATCHABLE_FIELDS)
    current = {name: getattr(row, name) for name in SUBMITTED}
    current["paused"] = row.paused_at is not None
    if "delivery" in patch and "max_attempts" not in patch:
        current["max_attempts"] = None  # back to the new delivery's default
    return parse_job({**current, **patch}, fields=PATCHABLE_FIELDS)


@dataclass(frozen=True)
class Plan:
    occurrences: list[datetime]  # to become tasks, oldest first
    next_run_at: datetime
    skipped: int  # missed occurrences the misfire policy dropped


def plan(*, schedule: Schedule, next_run_at: datetime, now: datetime, horizon: timedelta,
         misfire_policy: str, starting_deadline_s: float | None, max_catchup: int) -> Plan:
    """Which occurrences from ``next_run_at`` on become tasks now (see the module doc)."""
    cutoff = now - MISFIRE_TOLERANCE
    occurrences: list[datetime] = []
    skipped = 0
    if next_run_at < cutoff:
        keep = {"run_once": 1, "skip": 0, "run_all": max_catchup}[misfire_policy]
        deadline = (None if starting_deadline_s is None
                    else now - timedelta(seconds=starting_deadline_s))
        missed: list[datetime] = []
        for occurrence in schedule.before(cutoff):  # latest first
            if occurrence < next_run_at or len(missed) + skipped >= MAX_COUNTED_MISSES:
                break
            if len(missed) < keep and (deadline is None or occurrence >= deadline):
                missed.append(occurrence)
            else:
                skipped += 1
        occurrences.extend(reversed(missed))
        start = cutoff
    else:
        start = next_run_at
    until = now + horizon
    following = next_run_at
    for occurrence in schedule.after(start - timedelta(microseconds=1)):
        following = occurrence
        if occurrence > until or len(occurrences) >= MAX_OCCURRENCES_PER_STEP:
            break
        occurrences.append(occurrence)
    return Plan(occurrences=occurrences, next_run_at=following, skipped=skipped)


def job_resource(row: JobRow, *, now: datetime,
                 recent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    schedule = Schedule(row.cron, row.timezone)
    resource: dict[str, Any] = {"id": row.id, "kind": "job"}
    for name in ("name", "command", "cron", "timezone", "delivery", "max_attempts",
                 "timeout_s", "env", "concurrency_policy", "misfire_policy",
                 "starting_deadline_s", "max_catchup", "idempotency_key", "target"):
        resource[name] = getattr(row, name)
    resource["webhooks"] = shown(row.webhooks)  # never their secrets
    resource["paused"] = row.paused_at is not None
    resource["description"] = schedule.describe()
    # A paused job has no next runs: it makes none until it is resumed.
    resource["next_runs"] = ([] if row.paused_at is not None
                             else [format_timestamp(t) for t in schedule.next_runs(now, 5)])
    for name in ("paused_at", "next_run_at", "created_at", "updated_at"):
        resource[name] = format_timestamp(getattr(row, name))
    if recent is not None:
        resource["recent"] = [{**r, "scheduled_at": format_timestamp(r["scheduled_at"])}
                              for r in recent]
    return resource
