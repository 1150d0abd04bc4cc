"""The HTTP server: routing, authentication, limits, JSON decoding and error shapes
(SPEC §3).

Every response is JSON. Client mistakes are 4xx with ``{"error", "field"}``; a database
that cannot be reached is 503; anything unexpected is a 500 with a generic message (the
traceback goes to the log, never to the client).

What a hostile client cannot do: send more than 1 MiB (413), nest JSON deeper than
``MAX_JSON_DEPTH``, hold a thread by sending slowly (a request's line, headers and body
must arrive within ``REQUEST_DEADLINE_S``, or the connection is shut), or open more than
``MAX_CONNECTIONS`` at once (the rest get a 503 and are closed). With a token configured,
every route but the health checks needs ``Authorization: Bearer <token>``, compared in
constant time.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
import psycopg_pool

from chronocore import metrics
from chronocore.model import ValidationError
from chronosync_scheduler import dashboard, openapi
from chronosync_scheduler.api import MAX_ID, Api, ApiError, is_decimal

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
# Each read may wait this long; a request as a whole must arrive within the deadline
# (which also closes keep-alive connections left idle that long).
SOCKET_TIMEOUT_S = 10.0
REQUEST_DEADLINE_S = 15.0
MAX_CONNECTIONS = 256
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNAUTHENTICATED_PATHS = ("/healthz", "/readyz")
_BUSY = b'{"error":"too many connections; try again","field":null}\n'
TOO_MANY_CONNECTIONS = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY)
)
# curl -d sends form-urlencoded by default; we read the body as JSON whatever the label,
# as long as the label is not clearly something else.
ACCEPTED_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "")

TOKEN_COOKIE = "chronosync_token"


@dataclass(frozen=True)
class Raw:
    """A response that is not JSON: the dashboard's files, the metrics text."""

    content_type: str
    data: bytes


Handler = Callable[..., tuple[int, "dict[str, Any] | Raw"]]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting."""
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise ValueError(f"duplicate key {key!r}")
            result[key] = value
        return result

    try:
        text = raw.decode("utf-8")
        value = json.loads(text, parse_constant=_reject_constant,
                           object_pairs_hook=no_duplicates)
    except UnicodeDecodeError:
        raise ValidationError("the body is not UTF-8") from None
    except RecursionError:
        raise ValidationError("the body is nested too deeply") from None
    except ValueError as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise ValidationError(f"the body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    deepest, level = 0, [(value, 1)]
    while level:
        item, depth = level.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            level.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            level.extend((v, depth + 1) for v in item)
    return deepest


def _task_id(raw: str) -> int:
    if not is_decimal(raw) or int(raw) > MAX_ID:
        raise ApiError(404, f"no task {raw}")
    return int(raw)


def _job_id(raw: str) -> int:
    if not is_decimal(raw) or int(raw) > MAX_ID:
        raise ApiError(404, f"no job {raw}")
    return int(raw)


class Routes:
    """``(method, path pattern) -> handler``; a handler gets path groups, query, body."""

    def __init__(self, api: Api) -> None:
        self._table: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/schedule"), lambda q, b: api.schedule(b)),
            ("GET", re.compile(r"/tasks"), lambda q, b: api.list_tasks(q)),
            ("GET", re.compile(r"/tasks/([^/]+)"),
             lambda tid, q, b: api.get_task(_task_id(tid))),
            ("POST", re.compile(r"/tasks/([^/]+)/cancel"),
             lambda tid, q, b: api.cancel_task(_task_id(tid))),
            ("GET", re.compile(r"/jobs"), lambda q, b: api.list_jobs(q)),
            ("GET", re.compile(r"/jobs/([^/]+)"), lambda jid, q, b: api.get_job(_job_id(jid))),
            ("PATCH", re.compile(r"/jobs/([^/]+)"),
             lambda jid, q, b: api.patch_job(_job_id(jid), b)),
            ("DELETE", re.compile(r"/jobs/([^/]+)"),
             lambda jid, q, b: api.delete_job(_job_id(jid))),
            ("GET", re.compile(r"/nodes"), lambda q, b: api.list_nodes()),
            ("GET", re.compile(r"/healthz"), lambda q, b: (200, {"status": "ok"})),
            ("GET", re.compile(r"/readyz"), lambda q, b: api.ready()),
            ("GET", re.compile(r"/metrics"),
             lambda q, b: (200, Raw(METRICS_CONTENT_TYPE, api.metrics().encode()))),
            ("GET", re.compile(r"/openapi.json"), lambda q, b: (200, openapi.document())),
            ("GET", re.compile(r"/"), lambda q, b: (200, dashboard.asset("index.html"))),
            ("GET", re.compile(r"/static/([\w.-]+)"),
             lambda name, q, b: (200, dashboard.asset(name))),
        ]

    def described(self) -> list[tuple[str, str]]:
        """Every (method, path pattern) served, for the OpenAPI test."""
        return [(method, pattern.pattern) for method, pattern, _ in self._table]

    def match(self, method: str, path: str) -> tuple[Handler, tuple[str, ...]]:
        allowed = []
        for route_method, pattern, handler in self._table:
            found = pattern.fullmatch(path)
            if found:
                if route_method == method:
                    return handler, found.groups()
                allowed.append(route_method)
        if allowed:
            raise ApiError(405, f"{method} is not allowed on {path}; use {', '.join(allowed)}")
        raise ApiError(404, f"no such endpoint: {path}")

    def needs_body(self, method: str) -> bool:
        return method in ("POST", "PATCH", "PUT")


class RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    # Headers and body leave in two writes: with Nagle's algorithm the body waited for
    # the client's delayed ACK of the headers, 40 ms per response on a kept-alive
    # connection (8 clients: ~180 requests/s in all).
    disable_nagle_algorithm = True
    server_version = "ChronoSync"
    sys_version = ""
    routes: Routes  # set on a subclass by make_server
    server: ApiServer

    def __getattr__(self, name: str) -> Any:
        # http.server calls do_<METHOD>; every method goes through the router, so an
        # unknown one is a 405 (or 404) in our JSON shape rather than a bare 501.
        if name.startswith("do_"):
            return lambda: self._handle(name[3:])
        raise AttributeError(name)

    def handle_one_request(self) -> None:
        self.server.watch(self.connection)
        try:
            super().handle_one_request()
        finally:
            self.server.unwatch(self.connection)

    def _handle(self, method: str) -> None:
        try:
            self._authenticate()
            status, body = self._route(method)
        except ApiError as exc:
            status, body = exc.status, {"error": exc.message, "field": exc.field}
        except ValidationError as exc:
            status, body = 400, {"error": exc.message, "field": exc.field}
        except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as exc:
            log.warning("%s %s: database unavailable: %s", method, self.path, exc)
            status, body = 503, {"error": "the database is unavailable; try again",
                                 "field": None}
        except Exception:
            log.exception("%s %s failed", method, self.path)
            status, body = 500, {"error": "internal error", "field": None}
        metrics.REGISTRY.inc("chronosync_http_requests_total", "API requests by status.",
                             status=str(status))
        self._send(status, body, head_only=method == "HEAD")

    def _authenticate(self) -> None:
        """The bearer token, or the same token in the dashboard's cookie (SameSite)."""
        token = self.server.api_token
        if token is None or urlsplit(self.path).path in UNAUTHENTICATED_PATHS:
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = self._cookie(TOKEN_COOKIE)
        if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"),
                                   token.encode()):
            raise ApiError(401, "a valid 'Authorization: Bearer <token>' header is required")

    def _cookie(self, name: str) -> str:
        jar = SimpleCookie()
        try:
            jar.load(self.headers.get("Cookie", ""))
        except CookieError:
            return ""
        return unquote(jar[name].value) if name in jar else ""

    def _route(self, method: str) -> tuple[int, dict[str, Any] | Raw]:
        try:
            parts = urlsplit(self.path)
        except ValueError:
            raise ApiError(400, "the request target is not a valid URL") from None
        handler, groups = self.routes.match(method, parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._read_body() if self.routes.needs_body(method) else None
        self.server.unwatch(self.connection)  # the request is in: its handling may take time
        return handler(*groups, query, body)

    def _read_body(self) -> Any:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise ApiError(411, "send the body with a Content-Length, not chunked")
        length_header = self.headers.get("Content-Length", "0")
        if not is_decimal(length_header):
            self.close_connection = True
            raise ApiError(400, "Content-Length must be a whole number")
        length = int(length_header)
        if length == 0:
            return None  # no body: fine for actions like cancel; /schedule says what it needs
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # we do not read the rest of the body
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length)
        if len(raw) < length:
            self.close_connection = True
            raise ApiError(400, "the body is shorter than its Content-Length")
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in ACCEPTED_CONTENT_TYPES and not content_type.endswith("+json"):
            raise ApiError(415, f"send JSON (application/json), not {content_type}")
        return decode_json(raw)

    def _send(self, status: int, body: dict[str, Any] | Raw, *, head_only: bool) -> None:
        content_type, payload = "application/json", b""
        if status == 401 and "text/html" in self.headers.get("Accept", ""):
            body = Raw("text/html; charset=utf-8", dashboard.login_page())
        if isinstance(body, Raw):
            content_type, payload = body.content_type, body.data
        elif status != 204:  # "No Content" has no body at all
            payload = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(status, HTTPStatus(status).phrase)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(payload)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="chronosync"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, headers too long...)."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":  # the line was unreadable: answer as 1.0
            self.request_version = "HTTP/1.0"
        try:
            self._send(code, {"error": message or HTTPStatus(code).phrase, "field": None},
                       head_only=False)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class ApiServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them, each request within its
    deadline (a watchdog thread shuts the sockets of those too slow)."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: bursts of clients wait, not retry

    def __init__(self, address: tuple[str, int], handler: type[RequestHandler], *,
                 api_token: str | None) -> None:
        super().__init__(address, handler)
        self.api_token = api_token
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._watchdog, name="http-watchdog", daemon=True).start()

    def watch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + REQUEST_DEADLINE_S

    def unwatch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(TOO_MANY_CONNECTIONS)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.unwatch(request)
            self._slots.release()

    def _watchdog(self) -> None:
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            with self._lock:
                late = [conn for conn, deadline in self._deadlines.items() if deadline < now]
                for conn in late:
                    del self._deadlines[conn]
            for conn in late:
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # the blocked read returns; thread ends
                except OSError:
                    pass


def make_server(api: Api, *, host: str, port: int,
                api_token: str | None = None) -> ApiServer:
    handler = type("BoundHandler", (RequestHandler,), {"routes": Routes(api)})
    return ApiServer((host, port), handler, api_token=api_token)
