"""Webhooks: what a task or job may ask to be told, and how it is told.

A submission may carry ``"webhooks": [{"url": ..., "events": [...], "secret": ...}]``.
Events: ``failed``, ``succeeded``, ``missed`` (an occurrence skipped by the forbid policy,
or occurrences a job's misfire policy dropped) and ``recovered`` (an attempt taken back
from a dead worker: ``worker_lost``). A job's webhooks are copied to each task it makes.

How a notification travels (at least once, whatever node dies):

1. The statement that records the event (a finish, a recovery, a skip) fires a trigger
   (migration 0012) that writes one ``webhook_deliveries`` row per matching webhook, in
   the same transaction: the event and its delivery commit together or not at all.
2. Every coordinator runs a ``Deliverer`` (chronosync_coordinator.notify) that claims due
   rows with ``FOR UPDATE SKIP LOCKED`` under a lease, counting the attempt as it claims,
   and POSTs the JSON (``render``) signed with the webhook's secret (``sign``).
3. A 2xx ends the delivery; anything else (a status, a refused connection, a timeout, a
   redirect, which is never followed) makes it due again after an exponential backoff,
   until ``MAX_ATTEMPTS``, when it is given up (at once if its URL is no longer
   allowed). The result is written only if the row is still the attempt's (same
   holder, same attempt count): a deliverer that died leaves its lease to expire, and
   another coordinator sends the event again. Receivers dedupe on the
   ``X-ChronoSync-Delivery`` header, which is the same for every attempt.

Targets are limited to URL prefixes the operator allows (``CHRONOSYNC_WEBHOOK_ALLOW``):
checked at submission and again before every attempt, so a narrowed allowlist stops
deliveries already queued. With none allowed, webhooks are refused.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from psycopg_pool import ConnectionPool

from chronocore.queries import Queries, row_as

EVENTS = ("failed", "succeeded", "missed", "recovered")
MAX_WEBHOOKS = 5
MAX_URL_CHARS = 2048
# An HMAC key much shorter than this is guessable offline from one signed body.
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
WEBHOOK_FIELDS = frozenset({"url", "events", "secret"})
SIGNATURE_HEADER = "X-ChronoSync-Signature"
# Attempts before a delivery is given up: with the backoff below, over about 35 minutes
# (1 s, 2 s, ... 1024 s between them).
MAX_ATTEMPTS = 12
BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 1800.0
# What is kept of an answer's error text, and read of its body (nothing is needed).
MAX_ERROR_CHARS = 500
ENABLE_HINT = ("set CHRONOSYNC_WEBHOOK_ALLOW on the schedulers and coordinators to the "
               "URL prefixes webhooks may call (comma-separated)")


class WebhookError(ValueError):
    """A webhook is malformed or not allowed (the API answers 400, field ``webhooks``)."""


def _check_url(url: object, where: str) -> str:
    if not isinstance(url, str) or not url:
        raise WebhookError(f"{where}.url must be a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise WebhookError(f"{where}.url is longer than {MAX_URL_CHARS} characters")
    if not url.isascii():
        raise WebhookError(f"{where}.url must be ASCII (percent-encode a path, punycode a "
                           "host)")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in url):
        raise WebhookError(f"{where}.url must not contain spaces, control characters or "
                           "backslashes")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise WebhookError(f"{where}.url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(f"{where}.url must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise WebhookError(f"{where}.url must not carry a user name or password")
    if parts.fragment or url.endswith("#"):
        raise WebhookError(f"{where}.url must not have a #fragment")
    if _climbs(parts.path):
        raise WebhookError(f"{where}.url must not have . or .. path segments, nor a "
                           "percent-encoded '.', '/', '\\' or '%'")
    return url


def _climbs(path: str) -> bool:
    """Whether a path may leave the allowed prefix its text starts with once a receiver
    resolves it: a ``.`` or ``..`` segment (``..;x`` too, as some servers read it), or a
    percent-encoded dot, slash, backslash or percent (decoded once or twice, as some
    servers and proxies do)."""
    if any(code in path.lower() for code in ("%2e", "%2f", "%5c", "%25")):
        return True
    return any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/"))


def parse_webhooks(value: object) -> list[dict[str, Any]] | None:
    """The ``webhooks`` of a submission, validated (not yet against the allowlist):
    None when absent or empty."""
    if value is None:
        return None
    example = ('a list like [{"url": "https://hooks.example.com/chronosync", '
               '"events": ["failed"], "secret": "at least 16 characters"}]')
    if not isinstance(value, list):
        raise WebhookError(f"webhooks must be {example}")
    if len(value) > MAX_WEBHOOKS:
        raise WebhookError(f"webhooks has more than {MAX_WEBHOOKS} entries")
    hooks = []
    for i, hook in enumerate(value):
        where = f"webhooks[{i}]"
        if not isinstance(hook, dict):
            raise WebhookError(f"{where} must be an object with url, events and secret")
        unknown = sorted(set(hook) - WEBHOOK_FIELDS)
        if unknown:
            raise WebhookError(f"{where}: unknown field {unknown[0][:100]!r} (it takes url, "
                               "events and secret)")
        url = _check_url(hook.get("url"), where)
        events = hook.get("events")
        if not isinstance(events, list) or not events:
            raise WebhookError(f"{where}.events must be a non-empty list of "
                               f"{', '.join(EVENTS)}")
        for event in events:
            if event not in EVENTS:
                shown = event[:100] if isinstance(event, str) else event
                raise WebhookError(f"{where}.events: unknown event {shown!r} (events are "
                                   f"{', '.join(EVENTS)})")
        secret = hook.get("secret")
        if not isinstance(secret, str):
            raise WebhookError(f"{where}.secret must be a string of {MIN_SECRET_CHARS} to "
                               f"{MAX_SECRET_CHARS} characters")
        if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
            raise WebhookError(f"{where}.secret must be {MIN_SECRET_CHARS} to "
                               f"{MAX_SECRET_CHARS} characters long")
        if any(ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF for c in secret):
            raise WebhookError(f"{where}.secret must be printable text")
        hooks.append({"url": url, "events": sorted(set(events), key=EVENTS.index),
                      "secret": secret})
    return hooks or None


def parse_allowlist(raw: str | None) -> tuple[str, ...]:
    """``CHRONOSYNC_WEBHOOK_ALLOW``: comma-separated ``http(s)://host[:port]/path`` prefixes.
    A prefix without a path gets ``/``, so that ``https://hooks.example.com`` never lets
    ``https://hooks.example.com.evil.net`` through. Raises ValueError for a bad one."""
    prefixes = []
    for part in (raw or "").split(","):
        prefix = part.strip()
        if not prefix:
            continue
        try:
            _check_url(prefix, "prefix")
        except WebhookError as exc:
            raise ValueError(f"{prefix!r}: {str(exc).removeprefix('prefix.url ')}") from None
        if not urlsplit(prefix).path:
            prefix += "/"
        prefixes.append(prefix)
    return tuple(prefixes)


def allowed(url: str, allow: Sequence[str]) -> bool:
    """Whether ``url`` is under one of the ``allow`` prefixes (and names the same host)."""
    parts = urlsplit(url)
    return not _climbs(parts.path) and any(
        url.startswith(prefix) and urlsplit(prefix).netloc == parts.netloc
        for prefix in allow)


def check_allowed(hooks: Sequence[dict[str, Any]] | None, allow: Sequence[str]) -> None:
    """Raises WebhookError for a webhook whose URL the operator does not allow."""
    for i, hook in enumerate(hooks or ()):
        if not allow:
            raise WebhookError(f"webhooks are not enabled on this cluster: {ENABLE_HINT}")
        if not allowed(hook["url"], allow):
            raise WebhookError(f"webhooks[{i}].url is not under an allowed prefix (allowed: "
                               f"{', '.join(allow)})")


def shown(hooks: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Webhooks as the API shows them: the secret never leaves, only that it is set."""
    if not hooks:
        return None
    return [{"url": h["url"], "events": h["events"], "secret": "set"} for h in hooks]


# --- signing ---------------------------------------------------------------------------

def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under ``secret``."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                    hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-ChronoSync-Signature`` header: ``t=<unix seconds>,v1=<hex>``."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float,
           tolerance_s: float = 300.0) -> bool:
    """What a receiver checks: the signature matches and is recent (no replays)."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, body))


# --- one delivery ----------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class Delivery:
    """A delivery claimed for one attempt."""

    id: int
    task_id: int | None
    job_id: int | None
    event: str
    url: str
    secret: str
    payload: dict[str, Any]
    occurred_at: datetime
    attempts: int  # this attempt's number


@dataclass(frozen=True, kw_only=True)
class Result:
    delivered: bool
    status: int | None
    error: str | None
    # Not worth trying again: the URL is no longer allowed.
    final: bool = False


def gives_up(delivery: Delivery, result: Result) -> bool:
    """Whether this attempt's result ends the delivery unsent: its last attempt failed, or
    its URL is no longer allowed."""
    return not result.delivered and (result.final or delivery.attempts >= MAX_ATTEMPTS)


_TASK_TIMES = ("scheduled_at", "due_at", "picked_at", "started_at", "completed_at",
               "failed_at", "cancelled_at", "created_at")


def render(delivery: Delivery) -> bytes:
    """The body posted: the event, and the task as GET /tasks/{id} shows it (without its
    attempts and env) at the moment of the event; for a job's misfire, the job and the count."""
    # Imported here: chronocore.model imports this module (to validate submissions).
    from chronocore.model import TaskRow, format_timestamp, task_resource

    body: dict[str, Any] = {"event": delivery.event, "delivery_id": delivery.id,
                            "occurred_at": format_timestamp(delivery.occurred_at)}
    payload = dict(delivery.payload)
    if delivery.task_id is not None:
        for name in _TASK_TIMES:
            if payload.get(name) is not None:
                payload[name] = datetime.fromisoformat(payload[name])
        # Its env stays in the cluster (values may be credentials): not in the payload.
        body["task"] = task_resource(row_as(TaskRow, {**payload, "env": {}}), None)
        del body["task"]["env"]
    else:
        if payload.get("next_run_at") is not None:
            payload["next_run_at"] = format_timestamp(
                datetime.fromisoformat(payload["next_run_at"]))
        body.update(payload)
    return json.dumps(body, sort_keys=True).encode()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is the receiver's answer, not a place to go: following it would let an
    allowed URL send the request anywhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


# No proxy from the environment either: the allowlist is about where requests go.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def post(delivery: Delivery, *, allow: Sequence[str], timeout_s: float,
         now: float) -> Result:
    """One attempt: POST the signed body; never raises for what the network does."""
    if not allowed(delivery.url, allow):
        return Result(delivered=False, status=None, final=True,
                      error="url not under CHRONOSYNC_WEBHOOK_ALLOW; not sent")
    if delivery.attempts > MAX_ATTEMPTS:
        # Its last attempt never ended (its deliverer died, again and again): give up.
        return Result(delivered=False, status=None, final=True,
                      error=f"given up: attempt {MAX_ATTEMPTS} never ended")
    try:
        body = render(delivery)
        request = urllib.request.Request(delivery.url, data=body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": "ChronoSync-Webhook/1",
            "X-ChronoSync-Event": delivery.event,
            "X-ChronoSync-Delivery": str(delivery.id),
            "X-ChronoSync-Attempt": str(delivery.attempts),
            SIGNATURE_HEADER: sign(delivery.secret, int(now), body),
        })
        with _OPENER.open(request, timeout=timeout_s) as answer:
            status = answer.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return Result(delivered=False, status=exc.code, error=f"HTTP {exc.code}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        # Refused, timed out, not HTTP at all (a bad status line, too many headers), or a
        # body that cannot be rendered: a failed attempt like any other.
        error = f"{type(exc).__name__}: {exc}"
        return Result(delivered=False, status=None, error=error[:MAX_ERROR_CHARS])
    if 200 <= status < 300:
        return Result(delivered=True, status=status, error=None)
    return Result(delivered=False, status=status, error=f"HTTP {status}")


def backoff_s(attempts: int) -> float:
    """How long a delivery waits after its ``attempts``-th failure."""
    return min(BACKOFF_BASE_S * 2 ** (attempts - 1), BACKOFF_MAX_S)


@dataclass(frozen=True, kw_only=True)
class DeliveryRow:
    """A delivery as the API reads it (never its secret)."""

    id: int
    event: str
    url: str
    occurred_at: datetime
    attempts: int
    last_attempt_at: datetime | None
    last_status: int | None
    last_error: str | None
    # Each attempt that ended: {attempt, started_at, finished_at, status, error, by}.
    history: list[dict[str, Any]]
    delivered_at: datetime | None
    gave_up_at: datetime | None
    due_at: datetime


def delivery_resource(row: DeliveryRow) -> dict[str, Any]:
    """A delivery as the API shows it."""
    from chronocore.model import format_timestamp

    pending = row.delivered_at is None and row.gave_up_at is None
    state = "pending" if pending else ("delivered" if row.delivered_at else "given_up")
    return {
        "id": row.id, "event": row.event, "url": row.url, "state": state,
        "occurred_at": format_timestamp(row.occurred_at), "attempts": row.attempts,
        "last_attempt_at": format_timestamp(row.last_attempt_at),
        "last_status": row.last_status, "last_error": row.last_error,
        "delivered_at": format_timestamp(row.delivered_at),
        "gave_up_at": format_timestamp(row.gave_up_at),
        "next_attempt_at": format_timestamp(row.due_at) if pending else None,
        # One whose coordinator died mid-request has no entry.
        "history": [{**entry, **{name: format_timestamp(datetime.fromisoformat(
            entry[name])) for name in ("started_at", "finished_at")}}
            for entry in row.history],
    }


class WebhookRepository:
    """The deliveries' verbs over the named queries (see the module's docstring)."""

    def __init__(self, db: Queries | ConnectionPool) -> None:
        self._db = Queries.over(db)

    def claim(self, *, owner: str, limit: int, lease_s: float) -> list[Delivery]:
        return [row_as(Delivery, r) for r in self._db.all(
            "claim_webhook_deliveries", owner=owner, limit=limit, lease_s=lease_s)]

    def finish(self, delivery: Delivery, result: Result, *, owner: str) -> str | None:
        """Record an attempt's result; returns the state it left the delivery in
        (``delivered``, ``pending``: due again after the backoff, or ``given_up``), or None
        if the delivery is no longer this attempt's (its lease expired and another
        deliverer took it)."""
        give_up = gives_up(delivery, result)
        if self._db.one("finish_webhook_attempt", id=delivery.id, owner=owner,
                        attempt=delivery.attempts, delivered=result.delivered,
                        give_up=give_up, status=result.status, error=result.error,
                        retry_in_s=backoff_s(delivery.attempts)) is None:
            return None
        return "delivered" if result.delivered else "given_up" if give_up else "pending"

    def for_task(self, task_id: int) -> list[DeliveryRow]:
        return [row_as(DeliveryRow, r)
                for r in self._db.all("task_webhook_deliveries", id=task_id)]

    def for_job(self, job_id: int, *, limit: int = 20) -> list[DeliveryRow]:
        return [row_as(DeliveryRow, r)
                for r in self._db.all("job_webhook_deliveries", id=job_id, limit=limit)]

    def counts(self) -> dict[str, int]:
        row = self._db.one("webhook_delivery_counts")
        assert row is not None
        return {"pending": row["pending"], "given_up": row["given_up"]}

    def prune(self, *, retention_s: float, limit: int = 500) -> int:
        return len(self._db.all("prune_webhook_deliveries", retention_s=retention_s,
                                limit=limit))
