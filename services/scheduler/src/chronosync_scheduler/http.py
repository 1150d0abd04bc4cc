"""The HTTP server: routing, authentication, limits, JSON decoding and error shapes
(SPEC §3).

Every response is JSON. Client mistakes are 4xx with ``{"error", "field"}``; a database
that cannot be reached is 503; anything unexpected is a 500 with a generic message (the
traceback goes to the log, never to the client).

A request a browser sent on behalf of another site (a foreign ``Origin``,
``Sec-Fetch-Site: cross-site``, or, without a token, a ``Host`` that does not name this
machine) is refused with a 403 before authentication: origin.py says why and how.

What a hostile client cannot do: send more than 1 MiB (413), nest JSON deeper than
``MAX_JSON_DEPTH``, send a request line over ``MAX_REQUEST_LINE_BYTES`` (414) or headers
over ``MAX_HEADER_LINE_BYTES`` a line, ``MAX_HEADER_LINES`` lines or ``MAX_HEADER_BYTES``
in all (431), hold a thread by sending slowly (a request's line, headers and body must
arrive within ``REQUEST_DEADLINE_S``, or the connection is shut) or by sending nothing (a
connection idle for ``IDLE_TIMEOUT_S`` before a request line is closed), or open more than
``MAX_CONNECTIONS_PER_CLIENT`` connections from one address (429) or ``MAX_CONNECTIONS``
in all (503). With a token configured, every route but the health checks needs
``Authorization: Bearer <token>``, compared in constant time.

Framing, so that no request hides in another one's body on a kept-alive connection
(request smuggling): a request is framed by one ``Content-Length`` of plain digits or by
none; any ``Transfer-Encoding``, a second ``Content-Length`` and a malformed header
line are refused (400: a 4xx, as every answer to what a client sends). A body sent with
GET, HEAD or DELETE is never read (a 400 on a route that exists). Every refusal of that
kind closes the connection, and so does any answer given without reading the whole
declared body (401, 404, 405, 413...): the bytes left unread are never parsed as a
request. Before closing, the server reads and drops what the client is still sending,
for a moment (``LINGER_S``), so the client gets the answer rather than a reset.
"""

from __future__ import annotations

import hmac
import http.client
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
import psycopg_pool

from chronocore import metrics
from chronocore.model import ValidationError
from chronosync_scheduler import dashboard, openapi, origin
from chronosync_scheduler.api import Api, ApiError, Raw, whole_number

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
# What a request line and its headers may take; http.server alone allows 64 KiB a line
# and 100 lines, 6.4 MiB held per connection before any authentication. The API's own
# requests need a few hundred bytes; 8 KiB a line is what common proxies allow.
MAX_REQUEST_LINE_BYTES = 8 * 1024
MAX_HEADER_LINE_BYTES = 8 * 1024
MAX_HEADER_LINES = 100  # the blank line that ends them included, as http.server counts
MAX_HEADER_BYTES = 64 * 1024
# A connection (new, or kept alive between requests) that sends nothing this long is
# closed: an idle one holds a thread and a connection slot.
IDLE_TIMEOUT_S = 5.0
# Each read may wait this long; a request as a whole must arrive within the deadline.
SOCKET_TIMEOUT_S = 10.0
REQUEST_DEADLINE_S = 15.0
# How often the watchdog looks for requests past their deadline: well within it.
WATCHDOG_EVERY_S = 0.5
# After refusing a request whose body was not read, the server drains what the client
# still sends before closing (closing with unread bytes resets the connection, and the
# client may lose the answer); at most this long and this much.
LINGER_S = 2.0
LINGER_BYTES = MAX_BODY_BYTES + MAX_HEADER_BYTES
MAX_CONNECTIONS = 256
# One address may hold at most this many: a client re-opening connections as fast as they
# are closed cannot take every slot from the others. Behind a reverse proxy every client
# has the proxy's address, so the proxy's pool to the scheduler must stay under it.
MAX_CONNECTIONS_PER_CLIENT = 32
# A header line: a field name (an RFC 9110 token), a colon, a value without CR, LF or NUL.
# Anything else (obs-fold, a space before the colon, a bare CR) is refused: a proxy in
# front may read such a line differently, which is how requests get smuggled.
HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n\x00]*\r?\n")
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNAUTHENTICATED_PATHS = ("/healthz", "/readyz")


def _refusal(status: bytes, message: bytes) -> bytes:
    body = b'{"error":"%s","field":null}\n' % message
    return (b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, len(body), body))


TOO_MANY_CONNECTIONS = _refusal(b"503 Service Unavailable",
                                b"too many connections; try again")
TOO_MANY_FROM_CLIENT = _refusal(b"429 Too Many Requests",
                                b"too many connections from this address; try again")
# curl -d sends form-urlencoded by default; we read the body as JSON whatever the label,
# as long as the label is not clearly something else.
ACCEPTED_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded", "")
SIGN_IN_PATH = "/session"  # where the dashboard's sign-in form trades the token for a cookie


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


def _id_of(kind: str) -> Callable[[str], int]:
    """The id in a path: ``/tasks/abc`` names no task (404), as ``/tasks/0`` does."""
    def parse(raw: str) -> int:
        value = whole_number(raw)
        if value is None:
            raise ApiError(404, f"no {kind} {raw[:40]}")
        return value
    return parse


_task_id, _job_id = _id_of("task"), _id_of("job")


class BadHead(Exception):
    """The request line or headers break a bound or the header grammar."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HeadReader:
    """What ``http.client.parse_headers`` reads the header block through: each line within
    ``MAX_HEADER_LINE_BYTES`` and the header grammar, the block within
    ``MAX_HEADER_LINES`` and ``MAX_HEADER_BYTES``. Nothing past the block is read."""

    def __init__(self, rfile: Any) -> None:
        self._rfile = rfile
        self._lines = 0
        self._bytes = 0

    def readline(self, limit: int = -1) -> bytes:
        line = self._rfile.readline(MAX_HEADER_LINE_BYTES + 1)
        self._bytes += len(line)
        if len(line) > MAX_HEADER_LINE_BYTES:
            raise BadHead(431, f"a header line is over {MAX_HEADER_LINE_BYTES} bytes")
        if self._bytes > MAX_HEADER_BYTES:
            raise BadHead(431, f"the headers are over {MAX_HEADER_BYTES} bytes")
        self._lines += 1
        if self._lines > MAX_HEADER_LINES:
            raise BadHead(431, f"more than {MAX_HEADER_LINES} header lines")
        if line in (b"\r\n", b"\n"):
            return line
        if not line:  # the client left, or the watchdog cut it off: not a whole request
            raise BadHead(400, "the connection ended inside the headers")
        if not HEADER_LINE.fullmatch(line):
            raise BadHead(400, "a header line is not 'Name: value'")
        return line


class Routes:
    """``(method, path pattern) -> handler``; a handler gets path groups, query, body."""

    def __init__(self, api: Api, *, api_token: str | None = None) -> None:
        self._table: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/schedule"), lambda q, b: api.schedule(b)),
            ("GET", re.compile(r"/tasks"), lambda q, b: api.list_tasks(q)),
            ("GET", re.compile(r"/tasks/([^/]+)"),
             lambda tid, q, b: api.get_task(_task_id(tid))),
            ("POST", re.compile(r"/tasks/([^/]+)/cancel"),
             lambda tid, q, b: api.cancel_task(_task_id(tid))),
            ("POST", re.compile(r"/tasks/([^/]+)/retry"),
             lambda tid, q, b: api.retry_task(_task_id(tid), b)),
            ("GET", re.compile(r"/jobs"), lambda q, b: api.list_jobs(q)),
            ("GET", re.compile(r"/jobs/([^/]+)"), lambda jid, q, b: api.get_job(_job_id(jid))),
            ("PATCH", re.compile(r"/jobs/([^/]+)"),
             lambda jid, q, b: api.patch_job(_job_id(jid), b)),
            ("DELETE", re.compile(r"/jobs/([^/]+)"),
             lambda jid, q, b: api.delete_job(_job_id(jid))),
            ("POST", re.compile(r"/jobs/([^/]+)/run"),
             lambda jid, q, b: api.run_job(_job_id(jid), b)),
            ("GET", re.compile(r"/nodes"), lambda q, b: api.list_nodes()),
            ("GET", re.compile(r"/healthz"), lambda q, b: (200, {"status": "ok"})),
            ("GET", re.compile(r"/readyz"), lambda q, b: api.ready()),
            ("GET", re.compile(r"/metrics"),
             lambda q, b: (200, Raw(METRICS_CONTENT_TYPE, api.metrics().encode()))),
            ("GET", re.compile(r"/openapi.json"), lambda q, b: (200, openapi.document())),
            ("GET", re.compile(r"/"), lambda q, b: (200, dashboard.asset("index.html"))),
            ("POST", re.compile(SIGN_IN_PATH),
             lambda q, b: (200, dashboard.sign_in(b, token=api_token))),
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

    def handle(self) -> None:
        self._unread = False  # the client may have sent bytes this server will not read
        try:
            super().handle()
        finally:
            if self._unread:
                self._linger()

    def handle_one_request(self) -> None:
        """http.server's, with the request line bounded, an idle timeout before it, and
        the request (line, headers, body) watched for its deadline."""
        self.headers = http.client.HTTPMessage()  # none yet: errors before them read it
        self.request_version = self.requestline = self.command = ""
        self._body_left = 0
        try:
            self.connection.settimeout(IDLE_TIMEOUT_S)
            started = self.rfile.peek(1)
        except OSError:  # idle too long (TimeoutError), or reset
            self.close_connection = True
            return
        if not started:
            self.close_connection = True
            return
        self.connection.settimeout(SOCKET_TIMEOUT_S)
        self.server.watch(self.connection)
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE_BYTES + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE_BYTES:
                self.send_error(414, f"the request line is over {MAX_REQUEST_LINE_BYTES} bytes")
                return
            if not self.parse_request():
                return
            getattr(self, "do_" + self.command)()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True
        finally:
            self.server.unwatch(self.connection)

    def parse_request(self) -> bool:
        """http.server's parsing, with the headers read through a HeadReader, and a
        request target that must parse as a URL (absolute-form included)."""
        rfile, self.rfile = self.rfile, HeadReader(self.rfile)
        try:
            if not super().parse_request():
                return False
        except BadHead as exc:
            self.send_error(exc.status, exc.message)
            return False
        finally:
            self.rfile = rfile
        try:
            urlsplit(self.path)
        except ValueError:
            self.send_error(400, "the request target is not a valid URL")
            return False
        return True

    def _linger(self) -> None:
        """Read and drop what the client still sends, briefly, then let the socket close:
        closing with unread bytes would reset the connection under the answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + LINGER_S
            left = LINGER_BYTES
            while left > 0:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return
                self.connection.settimeout(wait)
                chunk = self.connection.recv(min(left, 65536))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            pass

    def _frame(self) -> None:
        """How long the body is, by the rules in the module docstring; a refusal here
        closes the connection."""
        lengths = self.headers.get_all("Content-Length") or []
        try:
            if self.headers.get_all("Transfer-Encoding"):
                raise ApiError(400, "Transfer-Encoding is not supported; send the body "
                                    "with a Content-Length")
            if len(lengths) > 1:
                raise ApiError(400, "more than one Content-Length")
            length = whole_number(lengths[0].strip(" \t")) if lengths else 0
            if length is None:
                raise ApiError(400, "Content-Length must be a whole number of bytes")
            if length > MAX_BODY_BYTES:
                raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
        except ApiError:
            self.close_connection = True
            self._unread = True
            raise
        self._body_left = length

    def _handle(self, method: str) -> None:
        try:
            self._frame()
            self._refuse_foreign()
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
        if self._body_left:  # answered without reading it: it must not become a request
            self.close_connection = True
            self._unread = True
        self._send(status, body, head_only=method == "HEAD")

    def _refuse_foreign(self) -> None:
        """A page on another site, or a rebound DNS name, gets a 403 before authentication
        (origin.py says why). Health checks stay open: probes use whatever name."""
        path = self.path.partition("?")[0]
        if path in UNAUTHENTICATED_PATHS:
            return
        reason = origin.foreign_request(
            self.headers, method=self.command, path=path, listen_host=self.server.listen_host,
            local_address=self.connection.getsockname()[0],
            token_set=self.server.api_token is not None)
        if reason is not None:
            raise ApiError(403, reason)

    def _authenticate(self) -> None:
        """The bearer token, or the same token in the dashboard's cookie (SameSite)."""
        token = self.server.api_token
        if token is None or urlsplit(self.path).path in (*UNAUTHENTICATED_PATHS,
                                                         SIGN_IN_PATH):
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = self._cookie(dashboard.TOKEN_COOKIE)
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
        if self._body_left and not self.routes.needs_body(method):
            raise ApiError(400, f"a {method} request takes no body")  # closes: unread
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._read_body() if self.routes.needs_body(method) else None
        self.server.unwatch(self.connection)  # the request is in: its handling may take time
        return handler(*groups, query, body)

    def _read_body(self) -> Any:
        length, self._body_left = self._body_left, 0  # framed and bounded by _frame
        if length == 0:
            return None  # no body: fine for actions like cancel; /schedule says what it needs
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
        self.send_header("Content-Security-Policy", dashboard.CONTENT_SECURITY_POLICY)
        self.send_header("X-Frame-Options", "DENY")  # frame-ancestors, for old browsers
        self.send_header("Content-Length", str(len(payload)))
        for name, value in body.headers if isinstance(body, Raw) else ():
            if name == "Set-Cookie" and self._reached_over_tls():
                value += "; Secure"
            self.send_header(name, value)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="chronosync"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not head_only:
            self.wfile.write(payload)

    def _reached_over_tls(self) -> bool:
        """This server speaks plain HTTP; a TLS proxy in front says the browser used TLS
        (a client lying about it only gets a cookie its browser will not keep)."""
        headers = getattr(self, "headers", None)  # absent when the request was unreadable
        proto = headers.get("X-Forwarded-Proto", "") if headers else ""
        return proto.split(",")[0].strip().lower() == "https"

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, headers too long...)."""
        if code >= 500:  # 505 for HTTP/2.0, 501: still about what the client sent
            code = 400
        self.close_connection = True
        self._unread = True  # the rest of the request is not read
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
    """A thread per connection, at most MAX_CONNECTIONS of them and
    MAX_CONNECTIONS_PER_CLIENT from one address, each request within its deadline (a
    watchdog thread shuts the sockets of those too slow).

    A service: it listens once made (so a port taken is known before anything starts);
    ``start`` serves on a thread of its own, with the watchdog; ``stop`` stops accepting,
    closes the socket and ends both threads. Safe to stop twice, or unstarted."""

    daemon_threads = True
    listen_host = ""  # CHRONOSYNC_HTTP_ADDR's host, for origin.foreign_request
    request_queue_size = 128  # the listen backlog: bursts of clients wait, not retry

    def __init__(self, address: tuple[str, int], handler: type[RequestHandler], *,
                 api_token: str | None) -> None:
        super().__init__(address, handler)
        self.api_token = api_token
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_client: dict[str, int] = {}
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._lifecycle = threading.Lock()
        self._started = False
        self._serving = threading.Thread(target=self.serve_forever, name="http")
        self._watchdog_thread = threading.Thread(target=self._watchdog, name="http-watchdog",
                                                 daemon=True)

    def start(self) -> None:
        with self._lifecycle:
            if self._started or self._stopping.is_set():
                return
            self._started = True
            self._watchdog_thread.start()
            self._serving.start()

    def stop(self) -> None:
        with self._lifecycle:
            if self._stopping.is_set():
                return
            self._stopping.set()
            started = self._started
        if started:
            self.shutdown()  # returns once serve_forever has (it never would unstarted)
            self._serving.join()
            self._watchdog_thread.join()
        self.server_close()

    def watch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines[conn] = time.monotonic() + REQUEST_DEADLINE_S

    def unwatch(self, conn: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(conn, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        client = client_address[0]
        with self._lock:
            held = self._per_client.get(client, 0)
            if held < MAX_CONNECTIONS_PER_CLIENT:
                self._per_client[client] = held + 1
        if held >= MAX_CONNECTIONS_PER_CLIENT:
            self._refuse(request, TOO_MANY_FROM_CLIENT)
            return
        if not self._slots.acquire(blocking=False):
            self._release(client)
            self._refuse(request, TOO_MANY_CONNECTIONS)
            return
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket, answer: bytes) -> None:
        try:
            request.sendall(answer)
        except OSError:
            pass
        self.shutdown_request(request)

    def _release(self, client: str) -> None:
        with self._lock:
            held = self._per_client.pop(client) - 1
            if held:
                self._per_client[client] = held

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.unwatch(request)
            self._slots.release()
            self._release(client_address[0])

    def _watchdog(self) -> None:
        while not self._stopping.wait(WATCHDOG_EVERY_S):
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
    handler = type("BoundHandler", (RequestHandler,),
                   {"routes": Routes(api, api_token=api_token)})
    server = ApiServer((host, port), handler, api_token=api_token)
    server.listen_host = host  # as configured: bind() leaves only the resolved address
    return server
