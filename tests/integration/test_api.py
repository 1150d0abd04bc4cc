"""The scheduler's HTTP contract (SPEC §3) against a real scheduler on a real database:
every bad request gets its 4xx JSON error and leaves the service answering, listing pages
newest first by cursor, cancel is idempotent, and /nodes describes the live nodes."""

from __future__ import annotations

import json
import re
import socket
from typing import Any

from harness import Cluster, http, wait_for

FAR_FUTURE = "2099-01-01T00:00:00Z"
MAX_BODY_BYTES = 1024 * 1024
UTC_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


# --- helpers ---------------------------------------------------------------------------


def _ready(cluster: Cluster) -> bool:
    try:
        return cluster.http("GET", "/readyz")[0] == 200
    except OSError:
        return False


def _start_scheduler(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _ready(cluster), timeout=30, what="the scheduler to be ready")


def _error_problem(status: int, body: Any, *, expected_status: int,
                   field: Any = ...) -> str | None:
    """Why (status, body) is not the expected SPEC error, or None when it is.

    ``field=...`` only checks that "field" is present (a name or null).
    """
    problems = []
    if status != expected_status:
        problems.append(f"status {status}, expected {expected_status}")
    if not isinstance(body, dict):
        return "; ".join([*problems, f"body {body!r} is not a JSON object"])
    error = body.get("error")
    if not isinstance(error, str) or not error.strip():
        problems.append(f"'error' is {error!r}, expected a non-empty string")
    elif "Traceback" in error:
        problems.append("'error' carries a stack trace")
    if "field" not in body:
        problems.append("no 'field' key")
    elif field is ...:
        if body["field"] is not None and not isinstance(body["field"], str):
            problems.append(f"'field' is {body['field']!r}, expected a name or null")
    elif body["field"] != field:
        problems.append(f"'field' is {body['field']!r}, expected {field!r}")
    return "; ".join(problems) or None


def _assert_still_serving(cluster: Cluster) -> None:
    """After the abuse, a valid submission is accepted and listed."""
    status, body = cluster.http("POST", "/schedule",
                                {"command": "true", "scheduled_at": FAR_FUTURE})
    assert status == 201, body
    assert body["kind"] == "task" and body["status"] == "scheduled"
    status, listing = cluster.http("GET", "/tasks")
    assert status == 200, listing
    assert body["id"] in [t["id"] for t in listing["tasks"]]


def _raw_exchange(port: int, data: bytes, *, timeout: float = 10.0,
                  ) -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is on a fresh connection, then half-close it (so a server waiting
    for more body sees the end); read one response as (status, headers, body).

    Status 0: the server closed without a parseable answer; -1: no answer in ``timeout``.
    """
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
        try:
            while True:
                head, sep, rest = received.partition(b"\r\n\r\n")
                if sep:
                    found = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                    if len(rest) >= (int(found.group(1)) if found else 0):
                        break
                chunk = conn.recv(65536)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return -1, {}, received
    head, _, rest = received.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    match = re.match(r"^HTTP/1\.[01] (\d{3}) ", lines[0])
    if not match:
        return 0, {}, received
    length = int(headers["content-length"]) if headers.get("content-length", "").isdigit() \
        else len(rest)
    return int(match.group(1)), headers, rest[:length]


def _raw_problem(port: int, data: bytes) -> str | None:
    """Why the raw request's answer is not a 4xx JSON error, or None when it is."""
    status, _, body = _raw_exchange(port, data)
    if status == -1:
        return "no response within 10 s (the server hangs)"
    if status == 0:
        return f"no HTTP status line; the server sent {body[:120]!r}"
    problems = []
    if not 400 <= status < 500:
        problems.append(f"status {status}, expected 4xx")
    try:
        decoded = json.loads(body)
    except ValueError:
        return "; ".join([*problems, f"body {body[:200]!r} is not JSON"])
    if not isinstance(decoded, dict) or not decoded.get("error"):
        problems.append(f"body {decoded!r} has no 'error'")
    return "; ".join(problems) or None


def _request(method: str, target: str, headers: dict[str, str] | None = None,
             body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1") + body


# --- 1. bad requests -----------------------------------------------------------------


def test_malformed_submissions_get_a_400_naming_the_field_and_the_service_keeps_serving(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    good = {"command": "true", "scheduled_at": FAR_FUTURE}
    # (what, raw body, expected status, expected field; ... = any name or null)
    cases: list[tuple[str, bytes, int, Any]] = [
        ("body not JSON", b"this is not json", 400, ...),
        ("truncated JSON", b'{"command": "true"', 400, ...),
        ("empty body", b"", 400, ...),
        ("invalid UTF-8", b'{"command": "\xff\xfe"}', 400, ...),
        ("JSON array body", b'["true"]', 400, None),
        ("JSON string body", b'"true"', 400, None),
        ("JSON null body", b"null", 400, None),
        ("command not a string", json.dumps({"command": 42}).encode(), 400, "command"),
        ("command a list", json.dumps({"command": ["true"]}).encode(), 400, "command"),
        ("command empty", json.dumps({"command": "  "}).encode(), 400, "command"),
        ("command with NUL", json.dumps({"command": "tr\u0000ue"}).encode(), 400,
         "command"),
        ("command a lone surrogate", b'{"command": "\\ud800"}', 400, "command"),
        ("command over 64 KiB",
         json.dumps({"command": "x" * (64 * 1024 + 1)}).encode(), 400, "command"),
        ("missing command", json.dumps({"scheduled_at": FAR_FUTURE}).encode(), 400,
         "command"),
        ("unknown field", json.dumps({**good, "colour": "red"}).encode(), 400, "colour"),
        ("naive scheduled_at",
         json.dumps({"command": "true", "scheduled_at": "2099-01-01T00:00:00"}).encode(),
         400, "scheduled_at"),
        ("date-only scheduled_at",
         json.dumps({"command": "true", "scheduled_at": "2099-01-01"}).encode(),
         400, "scheduled_at"),
        ("nonsense scheduled_at",
         json.dumps({"command": "true", "scheduled_at": "next tuesday"}).encode(),
         400, "scheduled_at"),
        ("impossible date",
         json.dumps({"command": "true", "scheduled_at": "2099-02-30T00:00:00Z"}).encode(),
         400, "scheduled_at"),
        ("out-of-range offset instant",
         json.dumps({"command": "true", "scheduled_at": "9999-12-31T23:59:59-23:59"})
         .encode(), 400, "scheduled_at"),
        ("scheduled_at a number",
         json.dumps({"command": "true", "scheduled_at": 4070908800}).encode(),
         400, "scheduled_at"),
        ("NaN literal", b'{"command": "true", "timeout_s": NaN}', 400, ...),
        ("Infinity literal", b'{"command": "true", "timeout_s": Infinity}', 400, ...),
        ("overflowing number", b'{"command": "true", "timeout_s": 1e400}', 400, ...),
        ("a 5000-digit integer",
         b'{"command": "true", "max_attempts": ' + b"9" * 5000 + b"}", 400, ...),
        ("duplicate keys", b'{"command": "true", "command": "false"}', 400, ...),
        ("deeply nested arrays", b"[" * 100_000, 400, ...),
        ("deeply nested objects", b'{"a":' * 100_000, 400, ...),
        ("deeply nested value of a field",
         b'{"command": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, ...),
        ("bad delivery", json.dumps({**good, "delivery": "twice"}).encode(), 400,
         "delivery"),
        ("max_attempts a bool", json.dumps({**good, "max_attempts": True}).encode(), 400,
         "max_attempts"),
        ("timeout_s negative", json.dumps({**good, "timeout_s": -1}).encode(), 400,
         "timeout_s"),
        ("env not an object", json.dumps({**good, "env": ["A=1"]}).encode(), 400, "env"),
        ("env value not a string", json.dumps({**good, "env": {"A": 1}}).encode(), 400,
         "env"),
        ("empty idempotency_key", json.dumps({**good, "idempotency_key": ""}).encode(), 400,
         "idempotency_key"),
    ]
    problems = []
    for what, raw, expected, field in cases:
        status, body = cluster.http("POST", "/schedule", raw=raw)
        problem = _error_problem(status, body, expected_status=expected, field=field)
        if problem:
            problems.append(f"{what}: {problem}")
    assert not problems, "\n".join(problems)
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 0
    _assert_still_serving(cluster)


def test_a_body_over_1_mib_is_a_413_and_one_of_exactly_1_mib_is_read(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    status, body = cluster.http("POST", "/schedule", raw=b" " * (MAX_BODY_BYTES + 1))
    assert _error_problem(status, body, expected_status=413) is None, (status, body)
    # Announced over the limit: refused on the header alone, before any body is read.
    status, _, raw = _raw_exchange(cluster.port, _request(
        "POST", "/schedule",
        {"Content-Type": "application/json", "Content-Length": str(10 * MAX_BODY_BYTES)},
    ))
    assert status == 413, raw
    assert json.loads(raw)["error"]
    # Exactly at the limit is fine (JSON allows trailing whitespace).
    valid = json.dumps({"command": "true", "scheduled_at": FAR_FUTURE}).encode()
    status, body = cluster.http("POST", "/schedule",
                                raw=valid + b" " * (MAX_BODY_BYTES - len(valid)))
    assert status == 201, body
    _assert_still_serving(cluster)


def test_a_body_labelled_as_something_other_than_json_is_a_415(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    valid = json.dumps({"command": "true", "scheduled_at": FAR_FUTURE}).encode()
    problems = []
    for content_type in ("text/plain", "application/xml", "multipart/form-data; boundary=x"):
        status, body = cluster.http("POST", "/schedule", raw=valid,
                                    headers={"Content-Type": content_type})
        problem = _error_problem(status, body, expected_status=415)
        if problem:
            problems.append(f"{content_type}: {problem}")
    assert not problems, "\n".join(problems)
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 0
    _assert_still_serving(cluster)


def test_curl_default_form_content_type_and_a_json_charset_are_accepted(
    cluster: Cluster,
) -> None:
    """SPEC's example uses ``curl -d``, which labels the body form-urlencoded."""
    _start_scheduler(cluster)
    for content_type in ("application/x-www-form-urlencoded",
                         "application/json; charset=utf-8"):
        status, body = cluster.http(
            "POST", "/schedule", {"command": "true", "scheduled_at": FAR_FUTURE},
            headers={"Content-Type": content_type},
        )
        assert status == 201, (content_type, body)
        assert body["kind"] == "task" and body["command"] == "true"


def test_unknown_paths_are_404_and_wrong_methods_on_known_paths_are_405(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    cases = [
        ("GET", "/nope", 404),
        ("GET", "/tasks/", 404),
        ("GET", "/schedule/extra", 404),
        ("POST", "/tasks/1/explode", 404),
        ("DELETE", "/schedule", 405),
        ("GET", "/schedule", 405),
        ("POST", "/nodes", 405),
        ("PUT", "/tasks", 405),
        ("DELETE", "/tasks/1", 405),
        ("GET", "/tasks/1/cancel", 405),
        ("POST", "/healthz", 405),
    ]
    problems = []
    for method, path, expected in cases:
        status, body = cluster.http(method, path, raw=b"{}" if method != "GET" else None)
        problem = _error_problem(status, body, expected_status=expected, field=None)
        if problem:
            problems.append(f"{method} {path}: {problem}")
    assert not problems, "\n".join(problems)
    _assert_still_serving(cluster)


def test_task_ids_that_are_not_tasks_are_404(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    cases = [
        ("GET", "/tasks/abc"),
        ("GET", "/tasks/-1"),
        ("GET", "/tasks/1.5"),
        ("GET", "/tasks/0"),
        ("GET", "/tasks/12345"),
        ("GET", "/tasks/9223372036854775807"),  # the largest bigint, not a task
        ("GET", "/tasks/9223372036854775808"),  # one past it
        ("GET", "/tasks/99999999999999999999999"),
        ("GET", "/tasks/%31"),
        ("POST", "/tasks/abc/cancel"),
        ("POST", "/tasks/12345/cancel"),
        ("POST", "/tasks/99999999999999999999999/cancel"),
    ]
    problems = []
    for method, path in cases:
        status, body = cluster.http(method, path, raw=b"{}" if method == "POST" else None)
        problem = _error_problem(status, body, expected_status=404)
        if problem:
            problems.append(f"{method} {path}: {problem}")
    assert not problems, "\n".join(problems)
    _assert_still_serving(cluster)


def test_bad_list_parameters_are_400_naming_the_parameter(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    cases = [
        ("status=bogus", "status"),
        ("status=", "status"),
        ("status=SCHEDULED", "status"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("limit=-1", "limit"),
        ("limit=", "limit"),
        ("limit=2.5", "limit"),
        ("limit=99999999999999999999999", "limit"),
        ("limit=%C2%B2", "limit"),  # '²' is a Unicode digit but not a number
        ("before=abc", "before"),
        ("before=-5", "before"),
        ("before=%C2%B2", "before"),
        ("job_id=abc", "job_id"),
    ]
    problems = []
    for query, field in cases:
        status, body = cluster.http("GET", f"/tasks?{query}")
        problem = _error_problem(status, body, expected_status=400, field=field)
        if problem:
            problems.append(f"GET /tasks?{query}: {problem}")
    assert not problems, "\n".join(problems)
    _assert_still_serving(cluster)


def test_protocol_level_garbage_gets_a_4xx_json_error_never_a_5xx(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    valid = json.dumps({"command": "true", "scheduled_at": FAR_FUTURE}).encode()
    json_type = {"Content-Type": "application/json"}
    cases: list[tuple[str, bytes]] = [
        ("POST without Content-Length", _request("POST", "/schedule", json_type)),
        ("chunked body", _request(
            "POST", "/schedule", {**json_type, "Transfer-Encoding": "chunked"},
            f"{len(valid):x}\r\n".encode() + valid + b"\r\n0\r\n\r\n")),
        ("non-numeric Content-Length", _request(
            "POST", "/schedule", {**json_type, "Content-Length": "ten"}, valid)),
        ("negative Content-Length", _request(
            "POST", "/schedule", {**json_type, "Content-Length": "-1"}, valid)),
        ("Unicode-digit Content-Length", _request(
            "POST", "/schedule", {**json_type, "Content-Length": "\xb2"}, valid)),
        ("body shorter than Content-Length", _request(
            "POST", "/schedule", {**json_type, "Content-Length": str(len(valid) + 10),
                                  "Connection": "close"}, valid)),
        ("malformed request line", b"GET /healthz HTTP/1.1 extra words\r\n\r\n"),
        ("bad HTTP version", b"GET /healthz HTTP/one.one\r\n\r\n"),
        ("a single word", b"HELLO\r\n\r\n"),
        ("binary garbage", b"\x00\xff\xfe\x01\x80\x81\r\n\r\n"),
        ("TLS handshake on the plain port",
         b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n"),
        ("request line over 64 KiB", b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n"),
        ("too many headers", _request(
            "GET", "/healthz", {f"X-H{i}": "v" for i in range(150)})),
        ("Unicode-digit task id", _request("GET", "/tasks/\xb2")),
        ("unparseable absolute-form target", _request("GET", "http://[/tasks")),
    ]
    problems = []
    for what, data in cases:
        problem = _raw_problem(cluster.port, data)
        if problem:
            problems.append(f"{what}: {problem}")
    assert not problems, "\n".join(problems)
    _assert_still_serving(cluster)


def test_an_unknown_method_is_a_4xx_json_error_not_a_5xx(cluster: Cluster) -> None:
    """SPEC §3: a method a path does not take is a 405; never a 5xx for client input."""
    _start_scheduler(cluster)
    problem = _raw_problem(cluster.port, _request("BREW", "/schedule"))
    assert problem is None, f"BREW /schedule: {problem}"
    _assert_still_serving(cluster)


# --- 2. listing ----------------------------------------------------------------------


def test_tasks_list_newest_first_and_the_cursor_pages_through_each_exactly_once(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    ids = []
    for n in range(5):
        status, body = cluster.http("POST", "/schedule",
                                    {"command": f"echo {n}", "scheduled_at": FAR_FUTURE})
        assert status == 201, body
        ids.append(body["id"])
    newest_first = sorted(ids, reverse=True)

    status, first = cluster.http("GET", "/tasks?limit=2")
    assert status == 200, first
    assert [t["id"] for t in first["tasks"]] == newest_first[:2]
    assert first["next"] is not None

    pages = [first]
    while pages[-1]["next"] is not None:
        assert len(pages) <= 5, "the cursor does not end"
        status, page = cluster.http("GET", f"/tasks?limit=2&before={pages[-1]['next']}")
        assert status == 200, page
        pages.append(page)
    seen = [t["id"] for page in pages for t in page["tasks"]]
    assert seen == newest_first, "each task once, newest first, across pages"
    assert [len(p["tasks"]) for p in pages] == [2, 2, 1]
    assert pages[-1]["next"] is None

    status, everything = cluster.http("GET", "/tasks")
    assert status == 200
    assert [t["id"] for t in everything["tasks"]] == newest_first
    assert everything["next"] is None
    task = everything["tasks"][0]
    assert task["kind"] == "task" and task["command"] == "echo 4"
    assert task["scheduled_at"] == FAR_FUTURE and UTC_STAMP.match(task["created_at"])

    status, scheduled = cluster.http("GET", "/tasks?status=scheduled")
    assert status == 200
    assert [t["id"] for t in scheduled["tasks"]] == newest_first
    assert all(t["status"] == "scheduled" for t in scheduled["tasks"])

    status, succeeded = cluster.http("GET", "/tasks?status=succeeded")
    assert status == 200
    assert succeeded == {"tasks": [], "next": None}

    status, limited = cluster.http("GET", "/tasks?status=scheduled&limit=1000")
    assert status == 200 and len(limited["tasks"]) == 5


# --- 3. cancel -----------------------------------------------------------------------


def test_cancelling_a_scheduled_task_is_200_and_cancelling_again_changes_nothing(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    status, created = cluster.http("POST", "/schedule",
                                   {"command": "true", "scheduled_at": FAR_FUTURE})
    assert status == 201, created
    task_id = created["id"]

    status, cancelled = cluster.http("POST", f"/tasks/{task_id}/cancel")
    assert status == 200, cancelled
    assert cancelled["id"] == task_id
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelled_at"] is not None and UTC_STAMP.match(cancelled["cancelled_at"])
    assert cancelled["started_at"] is None and cancelled["completed_at"] is None

    status, again = cluster.http("POST", f"/tasks/{task_id}/cancel")
    assert status == 200, again
    assert again["status"] == "cancelled"
    assert again["cancelled_at"] == cancelled["cancelled_at"]
    assert again == cancelled

    assert cluster.task(task_id)["status"] == "cancelled"
    status, listed = cluster.http("GET", "/tasks?status=cancelled")
    assert [t["id"] for t in listed["tasks"]] == [task_id]
    status, listed = cluster.http("GET", "/tasks?status=scheduled")
    assert listed["tasks"] == []

    status, body = cluster.http("POST", f"/tasks/{task_id + 1000}/cancel")
    assert _error_problem(status, body, expected_status=404) is None, (status, body)


def test_cancelling_a_finished_task_is_a_409_and_leaves_it_as_it_was(
    cluster: Cluster,
) -> None:
    cluster.start_default(coordinators=1, workers=1)
    finished = {}
    for command, outcome in (("true", "succeeded"), ("false", "failed")):
        status, created = cluster.http("POST", "/schedule", {"command": command})
        assert status == 201, created
        task = cluster.wait_task(created["id"], ("succeeded", "failed", "cancelled"))
        assert task["status"] == outcome, task
        finished[outcome] = task

    for outcome, task in finished.items():
        status, body = cluster.http("POST", f"/tasks/{task['id']}/cancel")
        assert _error_problem(status, body, expected_status=409) is None, (outcome, body)
        after = cluster.task(task["id"])
        assert after["status"] == outcome and after["cancelled_at"] is None
        assert after["completed_at"] == task["completed_at"]
        assert after["failed_at"] == task["failed_at"]


# --- 4. nodes and health -------------------------------------------------------------


def test_nodes_lists_each_live_node_with_rfc3339_times_and_worker_load(
    cluster: Cluster,
) -> None:
    pids = {kind: cluster.start(kind).pid for kind in ("scheduler", "coordinator", "worker")}
    cluster.wait_ready(coordinators=1, workers=1)

    def one_alive_of_each() -> list[dict[str, Any]] | None:
        status, body = cluster.http("GET", "/nodes")
        assert status == 200, body
        alive = [n for n in body["nodes"] if n["state"] == "alive"]
        kinds = sorted(n["kind"] for n in alive)
        return alive if kinds == ["coordinator", "scheduler", "worker"] else None

    nodes = wait_for(one_alive_of_each, timeout=30,
                     what="one alive scheduler, coordinator and worker in /nodes")
    by_kind = {n["kind"]: n for n in nodes}
    for kind, node in by_kind.items():
        for key in ("id", "kind", "host", "pid", "address", "started_at",
                    "last_heartbeat_at", "state"):
            assert key in node, (kind, key, node)
        assert isinstance(node["id"], str) and node["id"]
        assert isinstance(node["host"], str) and node["host"]
        assert isinstance(node["pid"], int) and node["pid"] > 0
        assert node["pid"] == pids[kind], (kind, node)
        assert UTC_STAMP.match(node["started_at"]), node
        assert UTC_STAMP.match(node["last_heartbeat_at"]), node
        assert node["last_heartbeat_at"] >= node["started_at"]
    worker = by_kind["worker"]
    assert worker["capacity"] == 8  # CHRONOSYNC_WORKER_CAPACITY in the test timings
    assert worker["running"] == 0
    assert isinstance(worker["address"], str) and worker["address"]
    assert len({n["id"] for n in nodes}) == 3


def test_healthz_and_readyz_answer_200(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    assert cluster.http("GET", "/healthz") == (200, {"status": "ok"})
    status, body = cluster.http("GET", "/readyz")
    assert status == 200, body
    assert isinstance(body, dict)
    # HEAD is not a route here, but it must still be a clean 4xx, never a 5xx.
    status, _ = http(cluster.url, "HEAD", "/healthz")
    assert 400 <= status < 500
