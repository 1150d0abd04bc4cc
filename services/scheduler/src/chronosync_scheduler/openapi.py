"""The API described as OpenAPI 3 (``GET /openapi.json``); a test keeps it and the routes
in step, both ways."""

from __future__ import annotations

from typing import Any

from chronocore import __version__
from chronocore.model import DELIVERIES, STATUSES
from chronocore.webhooks import (
    EVENTS,
    MAX_SECRET_CHARS,
    MAX_URL_CHARS,
    MAX_WEBHOOKS,
    MIN_SECRET_CHARS,
)

_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {str(code): _json(_ref("Error"), text) for code, text in (
    (400, "bad input (the error names the field)"), (401, "token required or wrong"),
    (403, "sent by a page on another site (Origin, Sec-Fetch-Site), or, without a token, "
          "to a Host that does not name the scheduler"),
    (404, "no such resource"), (405, "method not allowed"), (409, "conflict"),
    (413, "body over 1 MiB"), (415, "not JSON"), (503, "database unavailable"))}
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "integer", "minimum": 1}}
_PAGING = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                "maximum": 1000, "default": 100}},
    {"name": "before", "in": "query", "description": "the previous page's `next` cursor",
     "schema": {"type": "integer", "minimum": 1}},
]

_LABELS = {"type": "object", "additionalProperties": {
    "type": "string", "minLength": 1, "maxLength": 253,
    "pattern": "^[A-Za-z0-9._:@/+-]+$"},
    "description": "label keys: at most 63 letters, digits, '.', '_', '/' or '-'"}
_TARGET = {
    "type": "object", "nullable": True, "additionalProperties": False,
    "required": ["labels"],
    "description": "run only on a live worker whose labels include these; with all: "
                   "true, once on every matching live worker (one task each, pinned to "
                   "it, grouped by broadcast_id). Waits while no live worker matches.",
    "properties": {"labels": {**_LABELS, "minProperties": 1, "maxProperties": 16},
                   "all": {"type": "boolean", "default": False}}}

_WEBHOOKS = {
    "type": "array", "nullable": True, "maxItems": MAX_WEBHOOKS,
    "description": "HTTP POSTs of the task's JSON on its events, signed in the "
                   "X-ChronoSync-Signature header (t=<unix seconds>,v1=<hex HMAC-SHA256 of "
                   "'<t>.<body>' under the secret>), delivered at least once (dedupe on "
                   "X-ChronoSync-Delivery). URLs must be under a prefix of "
                   "CHRONOSYNC_WEBHOOK_ALLOW. A job's are copied to each task it makes. "
                   "Shown with \"secret\": \"set\", never the secret.",
    "items": {"type": "object", "additionalProperties": False,
              "required": ["url", "events", "secret"], "properties": {
                  "url": {"type": "string", "maxLength": MAX_URL_CHARS,
                          "description": "http:// or https://, no redirects followed"},
                  "events": {"type": "array", "minItems": 1, "items": {
                      "type": "string", "enum": list(EVENTS)}, "description":
                      "failed; succeeded; missed (skipped by concurrency_policy forbid, "
                      "or occurrences a job's misfire policy dropped); recovered (an "
                      "attempt taken back from a dead worker: worker_lost)"},
                  "secret": {"type": "string", "minLength": MIN_SECRET_CHARS,
                             "maxLength": MAX_SECRET_CHARS, "writeOnly": True}}}}

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "field"], "properties": {
        "error": {"type": "string"}, "field": {"type": "string", "nullable": True}}},
    "Submission": {
        "type": "object", "required": ["command"], "additionalProperties": False,
        "description": "A one-off task (scheduled_at, or neither: now), or a recurring "
                       "job (cron).",
        "properties": {
            "command": {"type": "string", "minLength": 1, "maxLength": 65536},
            "scheduled_at": {**_TIME, "description": "RFC 3339 with an offset"},
            "cron": {"type": "string", "description": "5 or 6 fields, or @daily etc."},
            "timezone": {"type": "string", "description": "IANA name; default UTC"},
            "name": {"type": "string", "maxLength": 200},
            "delivery": {"type": "string", "enum": list(DELIVERIES)},
            "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100},
            "timeout_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
            "concurrency_policy": {"type": "string", "enum": ["allow", "forbid", "replace"]},
            "misfire_policy": {"type": "string", "enum": ["run_once", "skip", "run_all"]},
            "starting_deadline_s": {"type": "number"},
            "max_catchup": {"type": "integer", "minimum": 1, "maximum": 10000},
            "paused": {"type": "boolean"},
            "target": _TARGET,
            "webhooks": _WEBHOOKS,
        },
    },
    "Delivery": {"type": "object", "description": "one webhook notification of an event",
                 "properties": {
        "id": {"type": "integer", "description": "also sent as X-ChronoSync-Delivery"},
        "event": {"type": "string", "enum": list(EVENTS)}, "url": {"type": "string"},
        "state": {"type": "string", "enum": ["pending", "delivered", "given_up"]},
        "occurred_at": _TIME, "attempts": {"type": "integer"},
        "last_attempt_at": _NULLABLE_TIME,
        "last_status": {"type": "integer", "nullable": True,
                        "description": "the HTTP status of the last attempt"},
        "last_error": {"type": "string", "nullable": True},
        "delivered_at": _NULLABLE_TIME, "gave_up_at": _NULLABLE_TIME,
        "next_attempt_at": {**_NULLABLE_TIME, "description": "while pending"},
        "history": {"type": "array", "description": "each attempt that ended (one whose "
                    "coordinator died mid-request has none)", "items": {
                        "type": "object", "properties": {
                            "attempt": {"type": "integer"}, "started_at": _TIME,
                            "finished_at": _TIME,
                            "status": {"type": "integer", "nullable": True},
                            "error": {"type": "string", "nullable": True},
                            "by": {"type": "string", "description": "the coordinator"}}}}}},
    "Attempt": {"type": "object", "properties": {
        "attempt": {"type": "integer"}, "worker_id": {"type": "string", "nullable": True},
        "started_at": _TIME, "finished_at": _NULLABLE_TIME,
        "exit_code": {"type": "integer", "nullable": True},
        "error": {"type": "string", "nullable": True}}},
    "Task": {"type": "object", "properties": {
        "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["task"]},
        "command": {"type": "string"}, "status": {"type": "string", "enum": list(STATUSES)},
        **{name: _NULLABLE_TIME for name in (
            "scheduled_at", "picked_at", "started_at", "completed_at", "failed_at",
            "cancelled_at", "created_at")},
        "next_attempt_at": {**_NULLABLE_TIME, "description":
                            "when a retrying task's next attempt is due; else null"},
        "delivery": {"type": "string", "enum": list(DELIVERIES)},
        "attempt": {"type": "integer"}, "max_attempts": {"type": "integer"},
        "timeout_s": {"type": "number", "nullable": True},
        "exit_code": {"type": "integer", "nullable": True},
        "error": {"type": "string", "nullable": True,
                  "description": "exit N, timeout, worker_lost, cancelled, spawn: ..."},
        "output": {"type": "string", "nullable": True,
                   "description": "last 64 KiB; in lists, the last 4,096 characters"},
        "output_truncated": {"type": "boolean", "description":
                             "in lists only: the output is longer than what is listed"},
        "worker_id": {"type": "string", "nullable": True},
        "job_id": {"type": "integer", "nullable": True},
        "idempotency_key": {"type": "string", "nullable": True},
        "target": _TARGET,
        "pinned_worker": {"type": "string", "nullable": True, "description":
                          "a broadcast's task runs on this worker only"},
        "broadcast_id": {"type": "string", "nullable": True, "description":
                         "the group of a broadcast (target.all)"},
        "broadcast": {"type": "array", "items": {"type": "integer"}, "description":
                      "GET /tasks/{id} and POST /schedule only: the ids of the tasks of "
                      "its broadcast"},
        "waiting": {"type": "string", "nullable": True, "description":
                    "why a due task does not run yet, e.g. 'no live worker matches "
                    "zone=eu-1'"},
        "retry_of": {"type": "integer", "nullable": True, "description":
                     "the task this one retries (POST /tasks/{id}/retry); else null"},
        "attempts": {"type": "array", "items": _ref("Attempt")},
        "webhooks": _WEBHOOKS,
        "deliveries": {"type": "array", "items": _ref("Delivery"), "description":
                       "GET /tasks/{id} only: its webhooks' deliveries, oldest first"}}},
    "Retry": {"type": "object", "additionalProperties": False, "properties": {
        "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 200,
                            "description": "a resent request gets the first retry (200)"}}},
    "Job": {"type": "object", "properties": {
        "id": {"type": "integer"}, "kind": {"type": "string", "enum": ["job"]},
        "name": {"type": "string", "nullable": True}, "command": {"type": "string"},
        "cron": {"type": "string"}, "timezone": {"type": "string"},
        "description": {"type": "string", "description": "the expression in words"},
        "next_runs": {"type": "array", "items": _TIME},
        "paused": {"type": "boolean"},
        "concurrency_policy": {"type": "string"}, "misfire_policy": {"type": "string"},
        "target": _TARGET, "webhooks": _WEBHOOKS,
        "deliveries": {"type": "array", "items": _ref("Delivery"), "description":
                       "GET /jobs/{id} only: deliveries of the job's own misfire events "
                       "(newest 20); its tasks' are on each task"}}},
    "Node": {"type": "object", "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "enum": ["scheduler", "coordinator", "worker"]},
        "host": {"type": "string"}, "pid": {"type": "integer"},
        "address": {"type": "string", "nullable": True},
        "started_at": _TIME, "last_heartbeat_at": _TIME,
        "state": {"type": "string", "enum": ["alive", "draining", "dead"]},
        "capacity": {"type": "integer"}, "running": {"type": "integer"},
        "labels": {**_LABELS, "description": "workers only: CHRONOSYNC_WORKER_LABELS, "
                   "with host=<host name> unless given"}}},
}


def _page(item: str, key: str) -> dict[str, Any]:
    return {"type": "object", "properties": {
        key: {"type": "array", "items": _ref(item)},
        "next": {"type": "string", "nullable": True}}}


PATHS: dict[str, Any] = {
    "/schedule": {"post": {
        "summary": "Submit a one-off task or a recurring job",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("Submission")}}},
        "responses": {"201": _json(_ref("Task"), "created (a Job when cron was given)"),
                      "200": _json(_ref("Task"), "idempotent replay"), **_ERRORS}}},
    "/tasks": {"get": {
        "summary": "Tasks, newest first",
        "parameters": [
            {"name": "status", "in": "query",
             "schema": {"type": "string", "enum": list(STATUSES)}},
            {"name": "job_id", "in": "query", "schema": {"type": "integer"}},
            {"name": "worker", "in": "query", "description": "the worker's node id, as "
             "GET /nodes gives it: the tasks it ran (or runs)",
             "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                        "pattern": "^[A-Za-z0-9._:@-]+$"}},
            {"name": "text", "in": "query", "description": "found anywhere in the "
             "command, ignoring case; '%', '_' and '\\' match themselves",
             "schema": {"type": "string", "minLength": 1, "maxLength": 200}},
            *_PAGING],
        "responses": {"200": _json(_page("Task", "tasks"), "a page"), **_ERRORS}}},
    "/tasks/{id}": {"get": {
        "summary": "One task with its attempts", "parameters": [_ID],
        "responses": {"200": _json(_ref("Task"), "the task"), **_ERRORS}}},
    "/tasks/{id}/cancel": {"post": {
        "summary": "Cancel: never starts, or its process group is terminated",
        "parameters": [_ID],
        "responses": {"200": _json(_ref("Task"), "the task"), **_ERRORS}}},
    "/tasks/{id}/retry": {"post": {
        "summary": "A new task from a finished one (same command, env and delivery; a "
                   "job's task stays the job's), due now, with retry_of naming the original",
        "parameters": [_ID],
        "requestBody": {"required": False, "content": {
            "application/json": {"schema": _ref("Retry")}}},
        "responses": {"201": _json(_ref("Task"), "the new task"),
                      "200": _json(_ref("Task"), "idempotent replay"),
                      **_ERRORS,
                      "409": _json(_ref("Error"), "the task has not finished (or is "
                                   "cancelled and still stopping), its job's "
                                   "concurrency_policy forbid would skip the retry, or the "
                                   "idempotency key is taken by another request")}}},
    "/jobs": {"get": {
        "summary": "Recurring jobs", "parameters": _PAGING,
        "responses": {"200": _json(_page("Job", "jobs"), "a page"), **_ERRORS}}},
    "/jobs/{id}": {
        "get": {"summary": "One job, in words, with its next runs", "parameters": [_ID],
                "responses": {"200": _json(_ref("Job"), "the job"), **_ERRORS}},
        "patch": {"summary": "Pause, resume or edit a job", "parameters": [_ID],
                  "requestBody": {"required": True, "content": {
                      "application/json": {"schema": _ref("Submission")}}},
                  "responses": {"200": _json(_ref("Job"), "the job"), **_ERRORS}},
        "delete": {"summary": "Delete a job; its tasks stay", "parameters": [_ID],
                   "responses": {"204": {"description": "deleted"}, **_ERRORS}}},
    "/jobs/{id}/run": {"post": {
        "summary": "Run now: an extra occurrence due now, made as a tick is (paused or "
                   "not); the schedule does not move. concurrency_policy replace cancels "
                   "the job's runs not finished",
        "parameters": [_ID],
        "requestBody": {"required": False, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": False, "properties": {}}}}},
        "responses": {"201": _json(_ref("Task"), "the new task"), **_ERRORS,
                      "409": _json(_ref("Error"), "concurrency_policy forbid and another "
                                   "run of the job is in flight or due: it would be "
                                   "skipped")}}},
    "/nodes": {"get": {
        "summary": "Every live or recently dead node",
        "responses": {"200": _json({"type": "object", "properties": {
            "nodes": {"type": "array", "items": _ref("Node")}}}, "the nodes"), **_ERRORS}}},
    "/healthz": {"get": {"summary": "The process is up", "security": [],
                         "responses": {"200": {"description": "up"}}}},
    "/readyz": {"get": {"summary": "The process can reach PostgreSQL", "security": [],
                        "responses": {"200": {"description": "ready"},
                                      "503": _json(_ref("Error"), "database unreachable")}}},
    "/metrics": {"get": {"summary": "Prometheus text: every live node's metrics",
                         "responses": {"200": {"description": "metrics", "content": {
                             "text/plain": {"schema": {"type": "string"}}}}, **_ERRORS}}},
    "/openapi.json": {"get": {"summary": "This document",
                              "responses": {"200": {"description": "OpenAPI 3"}}}},
    "/": {"get": {"summary": "The dashboard", "responses": {"200": {
        "description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    "/session": {"post": {
        "summary": "The dashboard's sign-in: the API token, answered with it in an "
                   "HttpOnly, SameSite=Strict cookie that then authenticates the browser",
        "security": [],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["token"], "additionalProperties": False,
            "properties": {"token": {"type": "string"}}}}}},
        "responses": {"200": {"description": "signed in; the cookie is in Set-Cookie"},
                      **_ERRORS}}},
    "/static/{name}": {"get": {
        "summary": "The dashboard's files",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {"200": {"description": "a file"}, **_ERRORS}}},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "ChronoSync", "version": __version__,
                 "description": "A fault-tolerant distributed cron on PostgreSQL."},
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
