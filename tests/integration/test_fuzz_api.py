"""A hypothesis-driven fuzz of the HTTP API: random JSON shapes and types, random bytes,
deep and large bodies, random paths, methods and headers; then, on raw sockets, what no
HTTP client library would send: odd request lines, absolute-form targets, numbers of
thousands of digits in ids, query parameters and Content-Length, many and large headers,
conflicting framing. No answer may be a 5xx, the service must stay up, and tasks
accepted before the fuzz must be unchanged after it."""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import Any

import pytest
from harness import Cluster, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = 1000
WIRE_EXAMPLES = 400
WIRE_TOKEN = "fuzz-token"
FIELDS = ["command", "scheduled_at", "cron", "timezone", "name", "delivery", "max_attempts",
          "timeout_s", "idempotency_key", "env", "paused", "concurrency_policy",
          "misfire_policy", "starting_deadline_s", "max_catchup", "target"]
PATHS = ["/schedule", "/tasks", "/tasks/1", "/tasks/1/cancel", "/tasks/1/retry", "/jobs",
         "/jobs/1", "/jobs/1/run", "/nodes", "/healthz", "/readyz", "/", "/tasks/", "//tasks",
         "/tasks/1/cancel/x", "/tasks/1/retry/x"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
# Values shaped like a target ({"labels": {...}, "all": ...}) with anything inside.
target_like = st.fixed_dictionaries(
    {"labels": json_values | st.dictionaries(st.text(max_size=8), json_scalars, max_size=4)},
    optional={"all": json_scalars, "extra": json_values})
# Bodies that look like submissions: known fields with values of any type.
submissions = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10),
                              json_values | target_like, max_size=8)


@st.composite
def fuzz_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    if draw(st.booleans()):  # half the time, the route that takes input
        method, path = "POST", "/schedule"
    else:
        method = draw(st.sampled_from(METHODS))
        path = draw(st.sampled_from(PATHS) | st.builds(
            lambda base, tail: base + tail, st.sampled_from(PATHS),
            st.text(alphabet="abc/?=&%.0123456789-_~", max_size=20)))
    kind = draw(st.sampled_from(["submission", "json", "bytes", "deep", "big", "empty"]))
    if kind == "submission":
        body = json.dumps(draw(submissions)).encode()
    elif kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
    elif kind == "deep":
        depth = draw(st.integers(min_value=30, max_value=100_000))
        body = b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    elif kind == "big":
        body = b'{"command":"' + b"x" * draw(st.integers(60_000, 1_100_000)) + b'"}'
    else:
        body = b""
    headers = {"Content-Type": draw(st.sampled_from(
        ["application/json", "text/plain", "application/x-www-form-urlencoded", "",
         "application/json; charset=latin-1", "multipart/form-data", "application/xml"]))}
    if draw(st.booleans()):
        headers[draw(st.sampled_from(["X-Fuzz", "Authorization", "Accept", "Expect"]))] = (
            draw(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                         max_size=30)))
    return method, path, body, headers


def send(port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def snapshot(cluster: Cluster, ids: list[int]) -> list[dict[str, Any]]:
    return [cluster.task(task_id) for task_id in ids]


# Big bodies are part of the fuzz; hypothesis warns when it describes one.
@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_fuzzing_the_api_never_gets_a_5xx_and_changes_nothing_accepted(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _up(cluster), timeout=30, what="the scheduler")
    before = [cluster.http("POST", "/schedule", {
        "command": f"echo {i}", "scheduled_at": "2099-01-01T00:00:00Z"})[1]["id"]
        for i in range(5)]
    kept = snapshot(cluster, before)
    seen: dict[int, int] = {}
    server_errors: list[tuple[str, str, int]] = []

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(request=fuzz_requests())
    def one(request: tuple[str, str, bytes, dict[str, str]]) -> None:
        method, path, body, headers = request
        # Cancels and deletes aim at what the fuzz itself made, never at the kept tasks; a
        # retry may (a kept task is not finished: it is refused and changes nothing).
        if path.startswith(("/tasks/1", "/jobs/1")) and method in ("POST", "DELETE", "PATCH") \
                and not path.startswith("/tasks/1/retry"):
            path = path.replace("/1", "/999999", 1)
        status = send(cluster.port, method, path, body, headers)
        seen[status] = seen.get(status, 0) + 1
        if status >= 500:
            server_errors.append((method, path, status))

    one()
    print(f"fuzz: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert not server_errors, server_errors[:10]
    assert _up(cluster)
    assert snapshot(cluster, before) == kept


def _up(cluster: Cluster) -> bool:
    try:
        return cluster.http("GET", "/healthz")[0] == 200
    except OSError:
        return False


# --- the wire --------------------------------------------------------------------------

# Whole numbers past any id (no leading zero: "0…01" would be task 1), up to 6,000 digits:
# Python's int() refuses more than 4,300.
huge_numbers = st.builds(lambda first, rest: first + rest, st.sampled_from("123456789"),
                         st.text(alphabet="0123456789", min_size=18, max_size=6000))
tokens = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1,
                 max_size=12)
latin1 = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@st.composite
def targets(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["number", "query", "absolute", "path", "text", "long",
                                 "known"]))
    if kind == "known":  # shapes that once got a 500
        return draw(st.sampled_from(["http://[/", "http://[/tasks", "http://[::1/tasks"]))
    if kind == "number":
        return draw(st.sampled_from(["/tasks/{}", "/jobs/{}", "/tasks/{}/cancel",
                                     "/tasks/{}/retry", "/jobs/{}/run"])).format(
            draw(huge_numbers))
    if kind == "query":
        name = draw(st.sampled_from(["limit", "before", "job_id", "status", "x"]))
        return f"{draw(st.sampled_from(['/tasks', '/jobs']))}?{name}={draw(huge_numbers)}"
    if kind == "absolute":
        scheme = draw(st.sampled_from(["http://", "https://", "ftp://", "http:", "//", ""]))
        host = draw(st.sampled_from(["[", "[::1]", "[::1", "127.0.0.1:99999", "evil.example",
                                     "h\xe9\u0131", "", "a@b:c", "[v1.x]"]))
        return scheme + host + draw(st.sampled_from(["/", "/tasks", "/healthz", "", "?x"]))
    if kind == "path":  # never a kept task's id: the token may be right
        return draw(st.sampled_from(PATHS)).replace("/1", "/999999")
    if kind == "text":
        return draw(latin1)
    return "/" + "a" * draw(st.integers(8_000, 70_000))


framing_headers = (
    st.tuples(st.just("Content-Length"), huge_numbers | st.sampled_from(
        ["0", "5", "-1", "+5", "5, 5", " 7", "0x10", "\xb2", ""]))
    | st.tuples(st.just("Transfer-Encoding"),
                st.sampled_from(["chunked", "gzip", "identity", ""]))
    | st.tuples(st.just("Authorization"), st.builds("Bearer {}".format, latin1))
    | st.just(("Expect", "100-continue"))
    | st.tuples(st.just("Connection"), st.sampled_from(["close", "keep-alive", "upgrade"]))
    | st.tuples(tokens, latin1))


@st.composite
def wire_requests(draw: st.DrawFn) -> bytes:
    shape = draw(st.sampled_from(["request", "request", "request", "garbage"]))
    if shape == "garbage":
        return draw(st.binary(max_size=300)) + draw(st.sampled_from([b"", b"\r\n\r\n"]))
    method = draw(st.sampled_from(METHODS) | tokens)
    version = draw(st.sampled_from(["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/1.1x",
                                    "http/1.1", "HTTP/01.01", "HTTP/1.1 extra", ""]))
    line = " ".join(part for part in (method, draw(targets()), version) if part)
    line = draw(st.sampled_from([line] * 5 + [line.replace(" ", "\t"), line + " ",
                                              " " + line]))
    headers = [("Host", "127.0.0.1")]
    if draw(st.booleans()):  # half the time past authentication, into the handlers
        headers.append(("Authorization", f"Bearer {WIRE_TOKEN}"))
    for _ in range(draw(st.integers(0, 4))):
        headers.append(draw(framing_headers))
    count = draw(st.sampled_from([0, 0, 50, 99, 101, 150]))
    headers += [(f"X-Many-{i}", "v") for i in range(count)]
    if draw(st.booleans()):
        headers.append(("X-Large", "a" * draw(st.integers(1_000, 70_000))))
    head = line + "\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers)
    if draw(st.integers(0, 3)) == 0:  # a malformed line among the headers
        head += draw(st.sampled_from(["Content-Length : 5\r\n", " folded\r\n",
                                      "X-A: b\rContent-Length: 9\r\n", "no colon\r\n"]))
    body = draw(st.sampled_from([b"", b"{}", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"]))
    return head.encode() + b"\r\n" + body


def send_raw(port: int, data: bytes) -> list[int]:
    """Send ``data`` and half-close; the status of every response until the server closes
    (0 for bytes that are not an HTTP response)."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # answered and closed before reading everything
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    statuses = []
    for found in re.finditer(rb"(?:^|\r\n\r\n|\}\n)(HTTP/1\.[01] (\d{3}) )", received):
        statuses.append(int(found.group(2)))
    return statuses or ([0] if received else [])


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_fuzzing_the_wire_never_gets_a_5xx_and_the_server_keeps_answering(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=WIRE_TOKEN)
    auth = {"Authorization": f"Bearer {WIRE_TOKEN}"}
    wait_for(lambda: _up(cluster), timeout=30, what="the scheduler")
    before = [cluster.http("POST", "/schedule", {
        "command": f"echo {i}", "scheduled_at": "2099-01-01T00:00:00Z"}, headers=auth)[1]["id"]
        for i in range(3)]
    kept = [cluster.http("GET", f"/tasks/{task_id}", headers=auth)[1] for task_id in before]
    seen: dict[int, int] = {}
    server_errors: list[tuple[bytes, list[int]]] = []

    @settings(max_examples=WIRE_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=wire_requests())
    def one(data: bytes) -> None:
        statuses = send_raw(cluster.port, data)
        for status in statuses:
            seen[status] = seen.get(status, 0) + 1
        if any(status >= 500 for status in statuses):
            server_errors.append((data[:200], statuses))

    one()
    print(f"wire fuzz: statuses {dict(sorted(seen.items()))}")
    assert not server_errors, server_errors[:10]
    assert _up(cluster)
    assert [cluster.http("GET", f"/tasks/{task_id}", headers=auth)[1]
            for task_id in before] == kept
