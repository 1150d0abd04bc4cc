"""The webhook deliverer's step over the fake seam, posting to a receiver on 127.0.0.1:
what it records for a success, a failure to try again, the last failure, and a URL no
longer allowed (never requested); and what it counts as given up."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chronocore.metrics import REGISTRY
from chronocore.testing import FakeQueries
from chronocore.webhooks import MAX_ATTEMPTS, SIGNATURE_HEADER, WebhookRepository, verify
from chronosync_coordinator.notify import GIVEN_UP, Deliverer

SECRET = "a-secret-of-16-chars"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, Message, bytes]]]]:
    seen: list[tuple[str, Message, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers, body))  # names case-insensitive
            self.send_response(500 if "/broken" in self.path else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def step(url: str, *, attempts: int = 1, allow: tuple[str, ...],
         taken_over: bool = False) -> dict[str, Any]:
    """One step over one claimed delivery; the parameters its result was written with.
    ``taken_over``: the write finds the delivery no longer this attempt's."""
    claimed = {"id": 7, "task_id": None, "job_id": 3, "event": "missed", "url": url,
               "secret": SECRET, "payload": {"job": {"id": 3}, "missed_occurrences": 2},
               "occurred_at": NOW, "attempts": attempts}
    fake = FakeQueries({"claim_webhook_deliveries": [claimed],
                        "finish_webhook_attempt": [] if taken_over else [{"id": 7}]})
    deliverer = Deliverer(hooks=WebhookRepository(fake), owner="coordinator-1",
                          allow=allow, timeout_s=5, retention_s=86400)
    assert deliverer.run_once() == 0.0  # delivered: the next step follows at once
    deliverer.stop()
    [claim] = fake.called("claim_webhook_deliveries")
    assert claim["owner"] == "coordinator-1" and claim["lease_s"] > 5  # outlives a request
    [finish] = fake.called("finish_webhook_attempt")
    assert (finish["owner"], finish["attempt"]) == ("coordinator-1", attempts)
    return finish


def test_a_2xx_is_recorded_as_delivered_and_the_request_is_signed(receiver: Any) -> None:
    base, seen = receiver
    finish = step(base + "/hooks/ok", allow=(base + "/hooks/",))
    assert finish["delivered"] and finish["status"] == 204
    [(path, headers, body)] = seen
    assert path == "/hooks/ok" and headers["X-ChronoSync-Delivery"] == "7"
    assert verify(SECRET, headers[SIGNATURE_HEADER], body,
                  now=datetime.now(UTC).timestamp())


def test_a_failure_is_tried_again_after_the_backoff_until_the_last_attempt(
    receiver: Any
) -> None:
    base, _ = receiver
    finish = step(base + "/hooks/broken", attempts=3, allow=(base + "/hooks/",))
    assert (finish["delivered"], finish["give_up"], finish["status"]) == (False, False, 500)
    assert finish["retry_in_s"] == 4.0
    finish = step(base + "/hooks/broken", attempts=MAX_ATTEMPTS, allow=(base + "/hooks/",))
    assert finish["give_up"] and not finish["delivered"]


def test_a_failure_s_log_lines_name_the_host_but_not_the_url_s_token(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A chat's incoming-webhook URL is its credential (a token in the path or query):
    the log says where the delivery went and which it was, not the whole URL."""
    base, _ = receiver
    url = base + "/hooks/T0/B0-path-token/broken?key=query-token"
    for attempts in (1, MAX_ATTEMPTS):
        step(url, attempts=attempts, allow=(base + "/hooks/",))
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("notify")]
    assert any("failed (attempt 1)" in line for line in lines), lines
    assert any(f"given up after {MAX_ATTEMPTS} attempts" in line for line in lines), lines
    for line in lines:
        assert base in line and "delivery 7" in line, line
        assert "path-token" not in line and "query-token" not in line, line


def test_a_url_no_longer_allowed_is_given_up_without_a_request(receiver: Any) -> None:
    base, seen = receiver
    finish = step(base + "/old/x", allow=(base + "/hooks/",))
    assert finish["give_up"] and "CHRONOSYNC_WEBHOOK_ALLOW" in finish["error"]
    assert seen == []


def test_stop_is_safe_before_start_and_twice() -> None:
    deliverer = Deliverer(hooks=WebhookRepository(FakeQueries()), owner="c", allow=(),
                          timeout_s=1, retention_s=1)
    deliverer.stop()
    deliverer.stop()
    deliverer.start()  # after stop: does nothing
    assert deliverer.run_once() is None  # nothing due: the next step waits


@pytest.fixture
def not_http() -> Iterator[str]:
    """A receiver that answers anything but HTTP: a bad status line."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn:
                conn.recv(65536)
                conn.sendall(b"garbage\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def test_an_answer_that_is_not_http_is_a_failed_attempt_recorded(not_http: str) -> None:
    finish = step(not_http + "/hooks/x", attempts=2, allow=(not_http + "/hooks/",))
    assert (finish["delivered"], finish["give_up"]) == (False, False)
    assert "BadStatusLine" in finish["error"] and finish["retry_in_s"] == 2.0


def test_a_delivery_whose_last_attempt_never_ended_is_given_up_unsent(receiver: Any) -> None:
    base, seen = receiver
    finish = step(base + "/hooks/ok", attempts=MAX_ATTEMPTS + 1, allow=(base + "/hooks/",))
    assert finish["give_up"] and "never ended" in finish["error"]
    assert seen == []


def given_up() -> float:
    [(_, count)] = REGISTRY.snapshot()[GIVEN_UP.name]["samples"]
    return count


def test_a_delivery_is_counted_given_up_only_when_its_result_s_write_gave_it_up(
    receiver: Any,
) -> None:
    base, _ = receiver
    allow = (base + "/hooks/",)
    before = given_up()
    assert step(base + "/hooks/broken", attempts=MAX_ATTEMPTS, allow=allow)["give_up"]
    assert given_up() == before + 1
    step(base + "/hooks/broken", attempts=MAX_ATTEMPTS - 1, allow=allow)  # tried again
    step(base + "/hooks/ok", attempts=MAX_ATTEMPTS, allow=allow)  # delivered
    # Its last attempt failed, but another deliverer holds it now: not ours to count.
    step(base + "/hooks/broken", attempts=MAX_ATTEMPTS, allow=allow, taken_over=True)
    assert given_up() == before + 1
