"""What each HTTP route does, over the task repository and node registry.

Handlers take parsed input and return ``(status, body)``; they raise ``ApiError`` (or the
model's ``ValidationError``) for anything the client got wrong. They know nothing of
sockets or headers: ``http.py`` does the wire.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg

from chronocore.model import (
    STATUSES,
    ValidationError,
    format_timestamp,
    parse_submission,
    task_resource,
)
from chronocore.registry import NodeRegistry
from chronocore.repository import IdempotencyConflict, TaskRepository
from chronocore.workerclient import cancel_on_worker

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_ID = 2**63 - 1


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def is_decimal(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def _int_param(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not is_decimal(raw) or int(raw) > MAX_ID:
        raise ValidationError(f"{name} must be a positive whole number", name)
    return int(raw)


@dataclass
class Api:
    repo: TaskRepository
    registry: NodeRegistry
    ttl_s: float

    def schedule(self, body: Any) -> tuple[int, dict[str, Any]]:
        submission = parse_submission(body)
        try:
            task_id, created = self.repo.submit(submission)
        except IdempotencyConflict as exc:
            raise ApiError(409, str(exc), "idempotency_key") from None
        return (201 if created else 200), self._task(task_id)

    def list_tasks(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        status = query.get("status")
        if status is not None and status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}", "status")
        limit = _int_param(query, "limit")
        if limit is None:
            limit = DEFAULT_LIMIT
        elif not 1 <= limit <= MAX_LIMIT:
            raise ValidationError(f"limit must be between 1 and {MAX_LIMIT}", "limit")
        rows = self.repo.list(status=status, job_id=_int_param(query, "job_id"),
                              before=_int_param(query, "before"), limit=limit)
        next_cursor = str(rows[-1]["id"]) if len(rows) == limit else None
        return 200, {"tasks": [task_resource(r, None) for r in rows], "next": next_cursor}

    def get_task(self, task_id: int) -> tuple[int, dict[str, Any]]:
        return 200, self._task(task_id)

    def cancel_task(self, task_id: int) -> tuple[int, dict[str, Any]]:
        changed = self.repo.cancel(task_id)
        if changed is None:
            task = self._task(task_id)
            if task["status"] in ("succeeded", "failed"):
                raise ApiError(409, f"task {task_id} already {task['status']}")
            return 200, task  # cancelled already: cancelling again changes nothing
        if changed["started_at"] is not None and changed["worker_id"]:
            self._signal_worker(changed["worker_id"], task_id)
        return 200, self._task(task_id)

    def list_nodes(self) -> tuple[int, dict[str, Any]]:
        nodes = []
        for row in self.registry.list_nodes(ttl_s=self.ttl_s):
            node = {k: row[k] for k in ("id", "kind", "host", "pid", "address", "state")}
            node["started_at"] = format_timestamp(row["started_at"])
            node["last_heartbeat_at"] = format_timestamp(row["last_heartbeat_at"])
            if row["kind"] == "worker":
                node["capacity"] = row["capacity"]
                node["running"] = row["running"]
            nodes.append(node)
        return 200, {"nodes": nodes}

    def ready(self) -> tuple[int, dict[str, Any]]:
        self.registry.list_nodes(ttl_s=self.ttl_s)  # any round trip proves the database
        return 200, {"status": "ready"}

    def _task(self, task_id: int) -> dict[str, Any]:
        found = self.repo.get(task_id)
        if found is None:
            raise ApiError(404, f"no task {task_id}")
        row, attempts = found
        return task_resource(row, attempts)

    def _signal_worker(self, worker_id: str, task_id: int) -> None:
        """Tell the worker now; if that fails it finds out at its next heartbeat."""
        try:
            address = self.registry.worker_address(worker_id)
            if address:
                cancel_on_worker(address, task_id)
        except (grpc.RpcError, psycopg.Error) as exc:
            log.warning("task %s: could not reach worker %s to cancel: %s", task_id,
                        worker_id, exc)
