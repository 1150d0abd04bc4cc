"""What a client may submit and what it gets back: validation of a submission into a
``Submission``, RFC 3339 timestamps, and the JSON shape of a task.

Validation is strict and total: every field is checked for presence, type and range, an
unknown field is an error, and every error names its field. Nothing here touches the
database, so all of it is unit-tested.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from chronocore.labels import MAX_TARGET_LABELS, LabelError, check_labels
from chronocore.webhooks import WebhookError, parse_webhooks, shown

MAX_COMMAND_BYTES = 64 * 1024
MAX_ATTEMPTS_LIMIT = 100
MAX_TIMEOUT_S = 30 * 24 * 3600.0
MAX_ENV_VARS = 256
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_SHORT_TEXT = 200  # names and idempotency keys
DELIVERIES = ("at_most_once", "at_least_once")
DEFAULT_MAX_ATTEMPTS = {"at_most_once": 1, "at_least_once": 3}
STATUSES = ("scheduled", "picked", "running", "retrying", "succeeded", "failed",
            "cancelled")
TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")

SUBMISSION_FIELDS = frozenset(
    {
        "command", "scheduled_at", "cron", "timezone", "name", "delivery", "max_attempts",
        "timeout_s", "idempotency_key", "env", "target", "webhooks",
    }
)

_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)\Z"
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Names that decide which program runs or what it loads before doing what it was asked:
# the shell's start-up files, the dynamic loader, interpreters' option and library
# variables, and where programs are found. Refused in every submission: they are how an
# allowlisted command is turned into an arbitrary one (``BASH_ENV`` with an allowlisted
# script), and a worker without an allowlist loses nothing, since a command can set them
# itself (``PATH=/opt/bin:$PATH tool``). A worker with an allowlist also wants every other
# name on its own CHRONOSYNC_ENV_ALLOWLIST.
UNSAFE_ENV_NAMES = frozenset({
    "PATH", "IFS", "ENV", "BASH_ENV", "SHELLOPTS", "BASHOPTS", "PS4", "CDPATH",
    "GCONV_PATH", "GLIBC_TUNABLES", "HOSTALIASES", "LOCPATH", "NLSPATH",
    "PYTHONSTARTUP", "PYTHONPATH", "PYTHONHOME", "PYTHONWARNINGS", "PYTHONINSPECT",
    "PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "NODE_OPTIONS", "NODE_PATH",
    "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS",
    "BROWSER", "EDITOR", "VISUAL", "PAGER",
})
UNSAFE_ENV_PREFIXES = ("LD_", "GIT_", "BASH_FUNC_", "MALLOC_")


class ValidationError(ValueError):
    """A client's input is wrong; ``field`` names the culprit (None: the body as a whole)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def parse_timestamp(value: object, *, field: str) -> datetime:
    """An RFC 3339 timestamp with an explicit offset, as an aware datetime (same instant)."""
    if not isinstance(value, str):
        raise ValidationError(f"{field} must be an RFC 3339 timestamp string", field)
    if not _RFC3339.match(value):
        if re.match(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", value):
            raise ValidationError(
                f"{field} has no UTC offset: add 'Z' or an offset like '+05:30'", field
            )
        raise ValidationError(
            f"{field} must be an RFC 3339 timestamp like 2026-12-25T22:34:00+05:30", field
        )
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value
    text = text.replace("t", "T", 1)
    # Python keeps microseconds: cut a longer fraction rather than reject it.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValidationError(f"{field} is not a valid date and time: {exc}", field) from None
    try:
        parsed.astimezone(UTC)
    except OverflowError:
        raise ValidationError(f"{field} is out of range", field) from None
    return parsed


def format_timestamp(value: datetime | None) -> str | None:
    """UTC with a ``Z``, microseconds only when there are some."""
    if value is None:
        return None
    utc = value.astimezone(UTC)
    text = utc.isoformat(timespec="microseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")


def _string(body: dict[str, Any], name: str, *, required: bool = False,
            max_bytes: int = MAX_SHORT_TEXT) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required", name)
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be a string", name)
    if required and not value.strip():
        raise ValidationError(f"{name} must not be empty", name)
    if "\x00" in value:
        raise ValidationError(f"{name} must not contain NUL characters", name)
    if len(value.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ValidationError(f"{name} is longer than {max_bytes} bytes", name)
    if not _is_unicode(value):
        raise ValidationError(f"{name} is not valid Unicode text", name)
    return value


def _is_unicode(text: str) -> bool:
    """False for lone surrogates, which JSON's \\ud800 escapes can smuggle in."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{name} must be a number", name)
    if not 0 < value <= MAX_TIMEOUT_S:  # also rejects NaN
        raise ValidationError(f"{name} must be above 0 and at most {MAX_TIMEOUT_S:g}", name)
    return float(value)


def _env(body: dict[str, Any]) -> dict[str, str]:
    value = body.get("env")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("env must be an object of strings", "env")
    if len(value) > MAX_ENV_VARS:
        raise ValidationError(f"env has more than {MAX_ENV_VARS} variables", "env")
    for key, item in value.items():
        if not _ENV_NAME.fullmatch(key):
            raise ValidationError(f"env name {key!r} is not a valid variable name", "env")
        if key.startswith("CHRONOSYNC_"):
            raise ValidationError(f"env name {key!r}: CHRONOSYNC_* names are reserved", "env")
        if key in UNSAFE_ENV_NAMES or key.startswith(UNSAFE_ENV_PREFIXES):
            raise ValidationError(
                f"env name {key!r} changes what a command loads or runs and is refused; "
                "set it in the command itself if you need it", "env")
        if not isinstance(item, str):
            raise ValidationError(f"env value of {key} must be a string", "env")
        if "\x00" in item or len(item.encode("utf-8", "surrogatepass")) > MAX_ENV_VALUE_BYTES:
            raise ValidationError(f"env value of {key} has NUL or is too long", "env")
        if not _is_unicode(item):
            raise ValidationError(f"env value of {key} is not valid Unicode text", "env")
    return dict(value)


TARGET_FIELDS = frozenset({"labels", "all"})


def parse_target(value: object) -> dict[str, Any] | None:
    """``{"labels": {...}}`` (run on one live worker with these labels), optionally with
    ``"all": true`` (on every one); stored in this shape, ``all`` only when true."""
    if value is None:
        return None
    example = 'an object like {"labels": {"zone": "eu-1"}}'
    if not isinstance(value, dict):
        raise ValidationError(f"target must be {example}", "target")
    unknown = sorted(set(value) - TARGET_FIELDS)
    if unknown:
        raise ValidationError(f"target: unknown field {unknown[0][:100]!r} (it takes labels "
                              "and all)", "target")
    labels = value.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValidationError(f"target.labels must be a non-empty object of strings, as in "
                              f"{example}", "target")
    try:
        labels = check_labels(labels, limit=MAX_TARGET_LABELS)
    except LabelError as exc:
        raise ValidationError(f"target.labels: {exc}", "target") from None
    every = value.get("all", False)
    if not isinstance(every, bool):
        raise ValidationError("target.all must be true or false", "target")
    return {"labels": labels, "all": True} if every else {"labels": labels}


@dataclass(frozen=True, kw_only=True)
class Submission:
    """A validated one-off submission. ``scheduled_at`` None means "now" (database clock)."""

    command: str
    scheduled_at: datetime | None
    delivery: str
    max_attempts: int
    timeout_s: float | None
    name: str | None
    idempotency_key: str | None
    env: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] | None = None
    webhooks: list[dict[str, Any]] | None = None

    def request_hash(self) -> str:
        """Fingerprint of what was asked, to tell an idempotent replay from a conflict."""
        return fingerprint(without_empty_target(
            {**asdict(self), "scheduled_at": format_timestamp(self.scheduled_at)}))


def without_empty_target(data: dict[str, Any]) -> dict[str, Any]:
    """A request without a target hashes as it did before targets existed, so replays of
    older idempotency keys still match."""
    for name in ("target", "webhooks"):  # webhooks came later still, likewise
        if data.get(name) is None:
            data.pop(name, None)
    return data


def fingerprint(data: dict[str, Any]) -> str:
    """A stable hash of a request's validated content."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_fields(body: object, allowed: frozenset[str]) -> dict[str, Any]:
    """The body is a JSON object with no field outside ``allowed``."""
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", unknown[0])
    return body


def parse_common(body: dict[str, Any]) -> dict[str, Any]:
    """The fields one-off tasks and recurring jobs share, validated."""
    command = _string(body, "command", required=True, max_bytes=MAX_COMMAND_BYTES)
    delivery = _string(body, "delivery")
    if delivery is None:
        delivery = "at_most_once"
    if delivery not in DELIVERIES:
        raise ValidationError(f"delivery must be one of {', '.join(DELIVERIES)}", "delivery")
    max_attempts = body.get("max_attempts")
    if max_attempts is None:
        max_attempts = DEFAULT_MAX_ATTEMPTS[delivery]
    elif isinstance(max_attempts, bool) or not isinstance(max_attempts, int):
        raise ValidationError("max_attempts must be a whole number", "max_attempts")
    elif not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise ValidationError(
            f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}", "max_attempts"
        )
    elif delivery == "at_most_once" and max_attempts != 1:
        raise ValidationError(
            "max_attempts above 1 needs delivery at_least_once", "max_attempts"
        )
    key = _string(body, "idempotency_key")
    if key is not None and not key:
        raise ValidationError("idempotency_key must not be empty", "idempotency_key")
    return {
        "command": command,
        "delivery": delivery,
        "max_attempts": max_attempts,
        "timeout_s": _number(body, "timeout_s"),
        "name": _string(body, "name"),
        "idempotency_key": key,
        "env": _env(body),
        "target": parse_target(body.get("target")),
        "webhooks": _webhooks(body),
    }


def _webhooks(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    try:
        return parse_webhooks(body.get("webhooks"))
    except WebhookError as exc:
        raise ValidationError(str(exc), "webhooks") from None


def parse_submission(body: object) -> Submission:
    """Validate a decoded ``POST /schedule`` body for a one-off task."""
    body = check_fields(body, SUBMISSION_FIELDS)
    if body.get("cron") is not None:
        raise ValidationError("cron makes a recurring job, not a one-off task", "cron")
    if body.get("timezone") is not None:
        raise ValidationError("timezone applies to cron schedules only", "timezone")
    scheduled_at = None
    if body.get("scheduled_at") is not None:
        scheduled_at = parse_timestamp(body["scheduled_at"], field="scheduled_at")
    return Submission(scheduled_at=scheduled_at, **parse_common(body))


# A retry by hand (POST /tasks/{id}/retry) may carry this, and nothing else.
RETRY_FIELDS = frozenset({"idempotency_key"})


def parse_retry(body: object) -> str | None:
    """The body of ``POST /tasks/{id}/retry``: none, ``{}``, or an ``idempotency_key``
    (a client that resends the request gets the first retry back, not a second one)."""
    if body is None:
        return None
    body = check_fields(body, RETRY_FIELDS)
    key = _string(body, "idempotency_key")
    if key is not None and not key:
        raise ValidationError("idempotency_key must not be empty", "idempotency_key")
    return key


@dataclass(frozen=True, kw_only=True)
class TaskRow:
    """A task as the API reads it: its columns and its derived ``status``. A row read for
    a list has only the end of its output, and ``output_truncated`` says whether that is
    all of it (None: a row read whole)."""

    id: int
    command: str
    status: str
    scheduled_at: datetime
    due_at: datetime
    picked_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    created_at: datetime
    delivery: str
    attempt: int
    max_attempts: int
    timeout_s: float | None
    exit_code: int | None
    error: str | None
    output: str | None
    worker_id: str | None
    job_id: int | None
    idempotency_key: str | None
    name: str | None
    env: dict[str, str]
    retry_of: int | None
    target: dict[str, Any] | None = None
    # A broadcast ("all"): the worker this task of the group runs on, and the group.
    pinned_worker: str | None = None
    broadcast_id: uuid.UUID | None = None
    output_truncated: bool | None = None
    webhooks: list[dict[str, Any]] | None = None  # with their secrets: never shown


@dataclass(frozen=True)
class Attempt:
    """One attempt of a task, as its history shows it."""

    attempt: int
    worker_id: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None


def task_resource(row: TaskRow, attempts: list[Attempt] | None, *,
                  waiting: str | None = None) -> dict:
    """A task as the API shows it; a listed one (no attempts) says whether its output
    was cut. ``waiting`` says why a due task is not running yet."""
    times = ("scheduled_at", "picked_at", "started_at", "completed_at", "failed_at",
             "cancelled_at", "created_at")
    resource: dict[str, Any] = {"id": row.id, "kind": "task", "command": row.command,
                                "status": row.status}
    resource.update({name: format_timestamp(getattr(row, name)) for name in times})
    # Waiting for its next at_least_once attempt: when that attempt becomes due.
    resource["next_attempt_at"] = (format_timestamp(row.due_at)
                                   if row.status == "retrying" else None)
    for name in ("delivery", "attempt", "max_attempts", "timeout_s", "exit_code", "error",
                 "output", "worker_id", "job_id", "idempotency_key", "name", "env",
                 "target", "pinned_worker"):
        resource[name] = getattr(row, name)
    resource["broadcast_id"] = None if row.broadcast_id is None else str(row.broadcast_id)
    resource["waiting"] = waiting
    resource["webhooks"] = shown(row.webhooks)  # never their secrets
    resource["retry_of"] = row.retry_of  # the task this one retries by hand, if any
    if row.output_truncated is not None:
        resource["output_truncated"] = row.output_truncated
    if attempts is not None:
        resource["attempts"] = [
            {**asdict(a), "started_at": format_timestamp(a.started_at),
             "finished_at": format_timestamp(a.finished_at)}
            for a in attempts
        ]
    return resource
