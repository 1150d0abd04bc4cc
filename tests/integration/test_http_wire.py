"""The scheduler's HTTP server on the wire, over raw sockets: no request hides in another
one's body on a kept-alive connection (request smuggling), headers and connections are
bounded, one address cannot take every connection, stalled clients cannot grow the
scheduler's memory, and a list of tasks carries only the end of their output."""

from __future__ import annotations

import re
import select
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from harness import Cluster, http, wait_for

from chronosync_dev.devcluster import NodeProcess

TOKEN = "wire-test-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
FAR_FUTURE = "2099-01-01T00:00:00Z"
SUBMISSION = b'{"command": "true", "scheduled_at": "2099-01-01T00:00:00Z"}'
# The server's bounds, as the README states them.
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_CLIENT = 32
MAX_HEADER_LINE_BYTES = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 5.0
SOCKET_TIMEOUT_S = 10.0
MIB = 1024 * 1024


def _start(cluster: Cluster, **env: str) -> NodeProcess:
    node = cluster.start("scheduler", **env)
    wait_for(lambda: _answers(cluster), timeout=30, what="the scheduler")
    return node


def _answers(cluster: Cluster) -> bool:
    try:
        return cluster.http("GET", "/healthz")[0] == 200
    except OSError:
        return False


def _connect(port: int, *, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))


def _exchange(port: int, data: bytes, *, quiet_s: float = 3.0) -> tuple[list[int], bool]:
    """Send ``data`` on one connection; the statuses of every response the server sends
    back, and whether it closed the connection (else it kept quiet ``quiet_s``)."""
    received, closed = b"", False
    with _connect(port, timeout=quiet_s) as conn:
        try:
            conn.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before reading everything: we read the answer
        try:
            while chunk := conn.recv(65536):
                received += chunk
            closed = True
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    return _statuses(received), closed


def _statuses(received: bytes) -> list[int]:
    statuses = []
    while received:
        head, sep, rest = received.partition(b"\r\n\r\n")
        found = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
        if not sep or not found:
            statuses.append(0)  # not an HTTP response
            break
        statuses.append(int(found.group(1)))
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        received = rest[int(length.group(1)) if length else 0:]
    return statuses


def _request(method: str, target: str, headers: str = "", body: bytes = b"") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n".encode(
        "iso-8859-1") + body


def _task_count(cluster: Cluster) -> int:
    return cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"]


# --- request smuggling ----------------------------------------------------------------


def test_a_body_on_a_get_never_becomes_the_next_clients_request(cluster: Cluster) -> None:
    _start(cluster, CHRONOSYNC_API_TOKEN=TOKEN)
    status, task = cluster.http("POST", "/schedule", {"command": "true",
                                "scheduled_at": FAR_FUTURE},
                                headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 201 and task["id"] == 1, task
    hidden = b"POST /tasks/1/cancel HTTP/1.1\r\nX-Ignore: "
    assert len(hidden) == 41
    attack = _request("GET", "/healthz", "Content-Length: 41\r\n", hidden)
    next_client = _request("GET", "/tasks", AUTH)
    statuses, closed = _exchange(cluster.port, attack + next_client)
    assert statuses == [400] and closed, statuses
    assert cluster.query("SELECT cancelled_at FROM tasks WHERE id = 1") == [
        {"cancelled_at": None}]
    assert cluster.http("GET", "/tasks/1", headers={"Authorization": f"Bearer {TOKEN}"}
                        )[1]["status"] == "scheduled"


def test_a_request_cut_off_inside_its_headers_is_not_carried_out(cluster: Cluster) -> None:
    """Headers end with a blank line; a connection closed (or cut off by the deadline)
    before it leaves an unfinished request, which must not act."""
    _start(cluster)
    status, task = cluster.http("POST", "/schedule", {"command": "true",
                                "scheduled_at": FAR_FUTURE})
    assert status == 201, task
    with _connect(cluster.port) as conn:
        conn.sendall(f"POST /tasks/{task['id']}/cancel HTTP/1.1\r\nHost: x\r\n".encode())
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    assert _statuses(received) == [400]
    assert cluster.task(task["id"])["status"] == "scheduled"


def test_a_refused_request_never_leaves_its_body_to_be_read_as_a_request(
    cluster: Cluster,
) -> None:
    _start(cluster, CHRONOSYNC_API_TOKEN=TOKEN)
    hidden = _request("POST", "/schedule", f"{AUTH}Content-Length: {len(SUBMISSION)}\r\n",
                      SUBMISSION)
    length = f"Content-Length: {len(hidden)}\r\n"
    cases = [
        ("401: no token", _request("POST", "/schedule", length, hidden), 401),
        ("404: no such route", _request("POST", "/nowhere", AUTH + length, hidden), 404),
        ("405: a GET-only route", _request("POST", "/healthz", length, hidden), 405),
        ("413: over 1 MiB", _request("POST", "/schedule", f"{AUTH}Content-Length: "
                                     f"{2 * MIB}\r\n", hidden), 413),
        ("415: not JSON", _request("POST", "/schedule",
                                   f"{AUTH}{length}Content-Type: text/plain\r\n", hidden),
         415),
        ("GET with a body", _request("GET", "/tasks", AUTH + length, hidden), 400),
        ("HEAD with a body", _request("HEAD", "/healthz", length, hidden), 405),
        ("DELETE with a body", _request("DELETE", "/jobs/1", AUTH + length, hidden), 400),
    ]
    problems = []
    for what, data, expected in cases:
        statuses, closed = _exchange(cluster.port, data)
        if statuses != [expected] or not (closed or expected == 415):  # 415: body read
            problems.append(f"{what}: answers {statuses}, closed {closed}; "
                            f"expected [{expected}] and closed")
    assert not problems, "\n".join(problems)
    assert _task_count(cluster) == 0  # the hidden submission never ran
    # Not a ban on keep-alive: a body read in full, or none, leaves the connection open.
    statuses, _ = _exchange(cluster.port, hidden + _request("GET", "/healthz") + hidden
                            + _request("GET", "/healthz", "Connection: close\r\n"))
    assert statuses == [201, 200, 201, 200]
    assert _task_count(cluster) == 2


def test_framing_a_proxy_could_read_differently_is_refused_and_closes(
    cluster: Cluster,
) -> None:
    _start(cluster)
    n = len(SUBMISSION)
    json_type = "Content-Type: application/json\r\n"
    cases = [
        ("the same Content-Length twice",
         f"Content-Length: {n}\r\nContent-Length: {n}\r\n", 400),
        ("two different Content-Lengths",
         f"Content-Length: {n}\r\nContent-Length: {n + 5}\r\n", 400),
        ("Transfer-Encoding chunked beside a Content-Length",
         f"Transfer-Encoding: chunked\r\nContent-Length: {n}\r\n", 400),
        ("Transfer-Encoding gzip", f"Transfer-Encoding: gzip\r\nContent-Length: {n}\r\n",
         400),
        ("Transfer-Encoding identity",
         f"Transfer-Encoding: identity\r\nContent-Length: {n}\r\n", 400),
        ("a sign before the length", f"Content-Length: +{n}\r\n", 400),
        ("a list as the length", f"Content-Length: {n}, {n}\r\n", 400),
        ("a 5,000-digit length", f"Content-Length: {'9' * 5000}\r\n", 400),
        ("a space before the colon", f"Content-Length : {n}\r\n", 400),
        ("a folded header line", f"X-Folded: a\r\n b\r\nContent-Length: {n}\r\n", 400),
        ("a bare CR inside a value", f"X-A: b\rContent-Length: {n}\r\n", 400),
    ]
    problems = []
    for what, headers, expected in cases:
        statuses, closed = _exchange(
            cluster.port, _request("POST", "/schedule", json_type + headers, SUBMISSION))
        if statuses != [expected] or not closed:
            problems.append(f"{what}: answers {statuses}, closed {closed}; "
                            f"expected [{expected}] and closed")
    statuses, closed = _exchange(cluster.port, _request(
        "GET", "/healthz", "Transfer-Encoding: chunked\r\n", b"0\r\n\r\n"))
    if statuses != [400] or not closed:
        problems.append(f"GET with Transfer-Encoding: answers {statuses}, closed {closed}")
    assert not problems, "\n".join(problems)
    assert _task_count(cluster) == 0
    assert _answers(cluster)


def test_unparseable_targets_and_huge_numbers_are_4xx_before_and_after_the_token(
    cluster: Cluster,
) -> None:
    """urlsplit raising, and int() refusing over 4,300 digits, were 500s."""
    _start(cluster, CHRONOSYNC_API_TOKEN=TOKEN)
    digits = "9" * 5000
    cases = [
        ("GET", "http://[/", "", 400),
        ("GET", "http://[/tasks", AUTH, 400),
        ("GET", f"/tasks/{digits}", AUTH, 404),  # as any id past the largest bigint
        ("POST", f"/tasks/{digits}/cancel", AUTH, 404),
        ("GET", f"/jobs/{digits}", AUTH, 404),
        ("GET", f"/tasks?limit={digits}", AUTH, 400),
        ("GET", f"/tasks?before={digits}", AUTH, 400),
        ("GET", f"/jobs?limit={digits}", AUTH, 400),
        ("GET", f"/tasks?job_id=0000{digits}", AUTH, 400),
        ("GET", "/healthz", f"Content-Length: {digits}\r\n", 400),
        ("POST", "/schedule", f"{AUTH}Content-Length: {digits}\r\n", 400),
    ]
    problems = []
    for method, target, headers, expected in cases:
        statuses, _ = _exchange(cluster.port, _request(method, target,
                                                       headers + "Connection: close\r\n"))
        if statuses != [expected]:
            problems.append(f"{method} {target[:40]}: answers {statuses}, "
                            f"expected [{expected}]")
    assert not problems, "\n".join(problems)
    assert _answers(cluster)


# --- bounds on headers and connections ---------------------------------------------------


def test_headers_over_their_bounds_get_431_and_within_them_are_served(
    cluster: Cluster,
) -> None:
    _start(cluster)
    line = "X-Pad-{}: " + "a" * 7000 + "\r\n"
    cases = [
        ("a header line over 8 KiB", "X-Big: " + "a" * (MAX_HEADER_LINE_BYTES + 1) + "\r\n",
         431),
        ("headers over 64 KiB in all", "".join(line.format(i) for i in range(10)), 431),
        # With Host, Connection and the blank line: 102 lines, then 100.
        ("102 header lines", "".join(f"X-H{i}: v\r\n" for i in range(99)), 431),
        ("100 header lines within 64 KiB",
         "".join(f"X-H{i}: {'v' * 600}\r\n" for i in range(97)), 200),
        ("8 KiB header lines within 64 KiB", "".join(line.format(i) for i in range(8)), 200),
    ]
    problems = []
    for what, headers, expected in cases:
        statuses, _ = _exchange(cluster.port, _request("GET", "/healthz",
                                                       headers + "Connection: close\r\n"))
        if statuses != [expected]:
            problems.append(f"{what}: answers {statuses}, expected [{expected}]")
    statuses, _ = _exchange(cluster.port, _request("GET", "/" + "a" * 9000))
    if statuses != [414]:
        problems.append(f"a request line over 8 KiB: answers {statuses}, expected [414]")
    assert not problems, "\n".join(problems)
    assert _answers(cluster)


def _memory_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB$", status, re.M)
    assert found, status
    return int(found.group(1))


def _unread_bytes(port: int) -> int:
    """Bytes clients sent that the server on ``port`` has not read yet (its sockets'
    receive queues, from /proc/net/tcp)."""
    total = 0
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        local_port = int(fields[1].rsplit(":", 1)[1], 16)
        if local_port == port and fields[3] != "0A":  # 0A: the listening socket
            total += int(fields[4].split(":")[1], 16)
    return total


def test_stalled_connections_sending_big_headers_keep_the_scheduler_memory_bounded(
    cluster: Cluster,
) -> None:
    node = _start(cluster)
    before = _memory_kib(node.pid, "VmRSS")
    # 32 connections, each 98 header lines of 60 KB and never the blank line that ends
    # them: http.server alone holds all of it (about 6 MB a connection) while it waits.
    head = _request("GET", "/healthz").removesuffix(b"\r\n")
    head += b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 60_000) for i in range(98))
    sent = threading.Semaphore(0)
    release = threading.Event()

    def stall(conn: socket.socket) -> None:
        try:
            conn.sendall(head)
        except OSError:
            pass  # the server refused and closed: what it should do
        sent.release()
        release.wait(60)

    with ExitStack() as stack:
        for i in range(32):
            conn = stack.enter_context(_connect(cluster.port, source=f"127.0.0.{10 + i % 4}",
                                                timeout=60))
            threading.Thread(target=stall, args=(conn,), daemon=True).start()
        try:
            for _ in range(32):
                assert sent.acquire(timeout=60), "a client could not send its headers"
            wait_for(lambda: _unread_bytes(cluster.port) == 0, timeout=30,
                     what="the scheduler to have read what the clients sent")
            grown = _memory_kib(node.pid, "VmHWM") - before
            assert _answers(cluster)
        finally:
            release.set()
    assert grown < 48 * 1024, f"the scheduler grew by {grown // 1024} MiB"


def test_an_idle_connection_is_closed_before_a_socket_read_would_time_out(
    cluster: Cluster,
) -> None:
    """A connection that never sends its request line holds a slot for IDLE_TIMEOUT_S,
    not for a whole socket read timeout."""
    _start(cluster)
    with _connect(cluster.port, timeout=(IDLE_TIMEOUT_S + SOCKET_TIMEOUT_S) / 2) as conn:
        try:
            closed = conn.recv(1) == b""
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            closed = False
    assert closed, "the server kept an idle connection open past its idle timeout"


@contextmanager
def flooding(port: int) -> Iterator[dict[str, int]]:
    """A client on 127.0.0.2 keeping more connections open than the server takes, idle,
    re-opening each one the server closes, until the test ends."""
    counts = {"opened": 0, "refused": 0}
    stop = threading.Event()

    def run() -> None:
        held: list[socket.socket] = []
        try:
            while not stop.is_set():
                while len(held) < MAX_CONNECTIONS + 44:
                    try:
                        held.append(_connect(port, source="127.0.0.2", timeout=5))
                        counts["opened"] += 1
                    except OSError:
                        break
                readable, _, _ = select.select(held, [], [], 0.05)
                for conn in readable:
                    try:
                        answer = conn.recv(4096)
                    except OSError:
                        answer = b""
                    if answer.startswith((b"HTTP/1.1 429", b"HTTP/1.1 503")):
                        counts["refused"] += 1
                    held.remove(conn)
                    conn.close()
        finally:
            for conn in held:
                conn.close()

    thread = threading.Thread(target=run, name="flood", daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(30)


def test_one_address_reopening_connections_cannot_starve_another(cluster: Cluster) -> None:
    _start(cluster)
    answers = []
    with flooding(cluster.port) as flood:
        wait_for(lambda: flood["opened"] > MAX_CONNECTIONS and flood["refused"] > 0,
                 timeout=30, what="the flood to fill the server")
        for _ in range(20):
            try:
                answers.append(http(cluster.url, "GET", "/healthz")[0])
            except OSError as exc:
                answers.append(str(exc))
    assert answers == [200] * 20, answers


def test_the_task_list_carries_only_the_end_of_outputs_within_a_memory_ceiling(
    cluster: Cluster,
) -> None:
    node = _start(cluster)
    cluster.query("INSERT INTO tasks (command, scheduled_at, due_at, output)"
                  " SELECT 'true', now() + interval '1 year', now() + interval '1 year',"
                  " repeat('x', 65536) FROM generate_series(1, 1000)")
    before = _memory_kib(node.pid, "VmRSS")
    status, listing = cluster.http("GET", "/tasks?limit=1000")
    grown = _memory_kib(node.pid, "VmHWM") - before
    assert status == 200 and len(listing["tasks"]) == 1000
    assert grown < 32 * 1024, f"the scheduler grew by {grown // 1024} MiB"
    assert all(task["output"] == "x" * 4096 and task["output_truncated"]
               for task in listing["tasks"])
    # Everything else a task has is listed (the list's query names its columns), but for
    # what only its own page carries: its attempts and its webhooks' deliveries.
    full = cluster.task(listing["tasks"][0]["id"])
    assert full["output"] == "x" * 65536
    assert listing["tasks"][0] == {**{name: value for name, value in full.items()
                                      if name not in ("attempts", "deliveries")},
                                   "output": "x" * 4096, "output_truncated": True}
