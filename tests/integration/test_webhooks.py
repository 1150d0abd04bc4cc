"""Webhooks: each event of a task reaches a receiver on this machine, signed, at least
once, whichever coordinator dies mid-request; and only URLs the operator allows are
ever called.

The receiver is an ``http.server`` on 127.0.0.1 run by the test; what it answers depends
on the path: ``/hooks/ok`` 200; ``/hooks/redirect`` 302 to ``/elsewhere/x``;
``/hooks/flaky`` 500 the first time, then 200; ``/hooks/hold`` holds the first request
open until the test lets go, then 200.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from harness import Cluster, node_id, wait_for

from chronocore.webhooks import verify

SECRET = "s3cret-for-the-webhook-test"
ALL_EVENTS = ["failed", "succeeded", "missed", "recovered"]


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def signed(self) -> bool:
        return verify(SECRET, self.headers.get("x-chronosync-signature", ""), self.body,
                      now=time.time())


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._lock:
                    seen = sum(r.path == self.path for r in receiver.received)
                    receiver.received.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = 200
                if self.path == "/hooks/redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.base + "/elsewhere/x")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path == "/hooks/flaky" and seen == 0:
                    status = 500
                if self.path == "/hooks/hold" and seen == 0:
                    receiver.release.wait(60)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender is gone (killed mid-request)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hook(self, path: str, events: list[str] | None = None) -> dict[str, Any]:
        return {"url": self.base + path, "events": events or ALL_EVENTS, "secret": SECRET}

    def events_of(self, task_id: int) -> dict[str, Received]:
        with self._lock:
            return {r.json["event"]: r for r in self.received
                    if r.json.get("task", {}).get("id") == task_id}

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    try:
        yield running
    finally:
        running.release.set()
        running.server.shutdown()
        running.server.server_close()


def allow(receiver: Receiver, *paths: str) -> dict[str, str]:
    return {"CHRONOSYNC_WEBHOOK_ALLOW": ",".join(receiver.base + p for p in paths)}


def submit(cluster: Cluster, body: dict[str, Any]) -> dict[str, Any]:
    status, created = cluster.http("POST", "/schedule", body)
    assert status == 201, created
    return created


def test_each_event_of_a_task_is_delivered_signed_and_the_secret_never_shown(
    cluster: Cluster, receiver: Receiver
) -> None:
    env = allow(receiver, "/hooks/")
    cluster.start("scheduler", **env)
    cluster.start("coordinator", **env)
    worker = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    hooks = [receiver.hook("/hooks/ok")]

    ok = submit(cluster, {"command": "true", "webhooks": hooks,
                          "env": {"API_PASSWORD": "kept-in-the-cluster"}})
    assert ok["webhooks"] == [{"url": receiver.base + "/hooks/ok", "events": ALL_EVENTS,
                               "secret": "set"}]
    failing = submit(cluster, {"command": "exit 3", "webhooks": hooks})
    lost = submit(cluster, {"command": "sleep 600", "webhooks": hooks})
    # forbid: the job's next occurrence is skipped while its first one runs.
    status, job = cluster.http("POST", "/schedule", {
        "command": "sleep 600", "cron": "* * * * * *", "concurrency_policy": "forbid",
        "webhooks": hooks})
    assert status == 201, job
    assert job["webhooks"][0]["secret"] == "set"

    def delivered(task_id: int, *events: str) -> dict[str, Received] | None:
        got = receiver.events_of(task_id)
        return got if set(events) <= set(got) else None

    succeeded = wait_for(lambda: delivered(ok["id"], "succeeded"), timeout=30,
                         what="the succeeded event")["succeeded"]
    assert succeeded.signed
    assert succeeded.json["task"]["status"] == "succeeded"
    assert succeeded.headers["x-chronosync-event"] == "succeeded"
    # The task's env stays in the cluster: its values may be credentials.
    assert "env" not in succeeded.json["task"]
    assert b"kept-in-the-cluster" not in succeeded.body
    failed = wait_for(lambda: delivered(failing["id"], "failed"), timeout=30,
                      what="the failed event")["failed"]
    assert failed.signed and failed.json["task"]["error"] == "exit 3"

    def skipped() -> Received | None:
        return next((r for r in receiver.received if r.json["event"] == "missed"
                     and r.json["task"]["job_id"] == job["id"]), None)

    missed = wait_for(skipped, timeout=30, what="a forbid-skipped occurrence's event")
    assert missed.signed and missed.json["task"]["status"] == "cancelled"
    assert missed.json["task"]["error"] == "skipped: concurrency_policy forbid"

    cluster.wait_task(lost["id"], ("running",))
    worker.signal(signal.SIGKILL)
    got = wait_for(lambda: delivered(lost["id"], "recovered", "failed"), timeout=30,
                   what="the recovered and failed events of the dead worker's task")
    for event in ("recovered", "failed"):
        assert got[event].signed
        assert got[event].json["task"]["error"] == "worker_lost"
    assert not delivered(ok["id"], "failed") and not delivered(lost["id"], "succeeded")

    # The attempts show in the API; the secret shows nowhere.
    status, body = cluster.http("GET", f"/tasks/{lost['id']}")
    assert status == 200
    assert {d["event"] for d in body["deliveries"]} == {"recovered", "failed"}
    assert all(d["state"] == "delivered" and d["last_status"] == 200 and d["attempts"] == 1
               for d in body["deliveries"]), body["deliveries"]
    for path in (f"/tasks/{lost['id']}", f"/jobs/{job['id']}", "/tasks", "/jobs"):
        status, body = cluster.http("GET", path)
        assert status == 200 and SECRET not in json.dumps(body), path
    for received in receiver.received:
        assert SECRET.encode() not in received.body

    # A delete skips the ticks made ahead, as the user asked: no missed event for them
    # (a delivery would be written by the delete's own statement).
    status, _ = cluster.http("DELETE", f"/jobs/{job['id']}")
    assert status in (200, 204)
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        [(skipped_by_delete, told)] = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE EXISTS ("
            "  SELECT 1 FROM webhook_deliveries d WHERE d.task_id = t.id))"
            " FROM tasks t WHERE t.job_id = %s AND t.error = 'skipped: job deleted'",
            (job["id"],)).fetchall()
    assert skipped_by_delete > 0 and told == 0, (skipped_by_delete, told)


def test_occurrences_a_misfire_drops_are_told_as_missed_with_the_job(
    cluster: Cluster, receiver: Receiver
) -> None:
    env = {**allow(receiver, "/hooks/"), "CHRONOSYNC_HORIZON_S": "1"}
    scheduler = cluster.start("scheduler", **env)
    cluster.start("coordinator", **env)
    cluster.wait_ready(coordinators=1, workers=0)
    status, job = cluster.http("POST", "/schedule", {
        "command": "true", "cron": "* * * * * *", "misfire_policy": "skip",
        "webhooks": [receiver.hook("/hooks/ok", ["missed"])]})
    assert status == 201, job

    # Every scheduler down while ticks pass: the one that comes back drops them.
    scheduler.signal(signal.SIGTERM)
    wait_for(lambda: not scheduler.alive(), timeout=30, what="the scheduler to stop")
    wait_for(lambda: cluster.query(
        "SELECT next_run_at < now() - interval '3 seconds' AS passed FROM jobs"
        " WHERE id = %s", (job["id"],))[0]["passed"], timeout=30,
        what="ticks to pass while no scheduler runs")
    cluster.start("scheduler", **env)

    def told() -> Received | None:
        return next((r for r in receiver.on("/hooks/ok")
                     if r.json.get("job", {}).get("id") == job["id"]), None)

    missed = wait_for(told, timeout=30, what="the misfire's missed event")
    assert missed.signed and missed.json["event"] == "missed"
    assert missed.json["missed_occurrences"] >= 2
    assert missed.json["next_run_at"].endswith("Z")
    status, shown = cluster.http("GET", f"/jobs/{job['id']}")
    assert status == 200 and shown["deliveries"][0]["event"] == "missed"
    assert SECRET not in json.dumps(shown)
    cluster.http("DELETE", f"/jobs/{job['id']}")


def test_a_failed_attempt_is_retried_after_a_backoff(
    cluster: Cluster, receiver: Receiver
) -> None:
    env = allow(receiver, "/hooks/")
    cluster.start("scheduler", **env)
    cluster.start("coordinator", **env)
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    task = submit(cluster, {"command": "true",
                            "webhooks": [receiver.hook("/hooks/flaky", ["succeeded"])]})

    def delivered() -> dict[str, Any] | None:
        deliveries = cluster.task(task["id"])["deliveries"]
        return deliveries[0] if deliveries and deliveries[0]["delivered_at"] else None

    delivery = wait_for(delivered, timeout=30, what="the delivery after a 500")
    assert delivery["attempts"] == 2 and delivery["last_status"] == 200
    assert [(h["attempt"], h["status"], h["error"]) for h in delivery["history"]] == [
        (1, 500, "HTTP 500"), (2, 200, None)]
    first, second = receiver.on("/hooks/flaky")
    assert first.body == second.body  # the same notification, sent again
    assert first.signed and second.signed
    assert (first.headers["x-chronosync-delivery"] == second.headers["x-chronosync-delivery"]
            == str(delivery["id"]))


def test_a_coordinator_killed_mid_request_loses_no_notification(
    cluster: Cluster, receiver: Receiver
) -> None:
    # A request may take 3 s; its lease then lasts 8 s, after which another coordinator
    # may try again.
    env = {**allow(receiver, "/hooks/"), "CHRONOSYNC_WEBHOOK_TIMEOUT_S": "3"}
    cluster.start("scheduler", **env)
    coordinators = [cluster.start("coordinator", **env) for _ in range(2)]
    cluster.start("worker")
    cluster.wait_ready(coordinators=2, workers=1)
    ids = {node_id(cluster, c): c for c in coordinators}
    task = submit(cluster, {"command": "true",
                            "webhooks": [receiver.hook("/hooks/hold", ["succeeded"])]})

    wait_for(lambda: receiver.on("/hooks/hold"), timeout=30,
             what="the first request to reach the receiver")
    holder = cluster.query("SELECT leased_by FROM webhook_deliveries WHERE task_id = %s",
                           (task["id"],))[0]["leased_by"]
    ids[holder].signal(signal.SIGKILL)  # while the receiver holds its request open

    second = wait_for(lambda: receiver.on("/hooks/hold")[1:], timeout=30,
                      what="another coordinator to send the event again")[0]
    assert second.signed and second.json["event"] == "succeeded"
    assert second.json["task"]["id"] == task["id"]
    delivery = wait_for(lambda: cluster.task(task["id"])["deliveries"][0]["delivered_at"]
                        and cluster.task(task["id"])["deliveries"][0], timeout=30,
                        what="the delivery to be recorded")
    assert delivery["attempts"] == 2
    # The killed coordinator's attempt ended nowhere; the survivor's is the one recorded.
    [ended] = delivery["history"]
    assert ended["attempt"] == 2 and ended["status"] == 200 and ended["by"] != holder
    row = cluster.query("SELECT leased_by FROM webhook_deliveries WHERE id = %s",
                        (delivery["id"],))[0]
    assert row["leased_by"] is None  # written by the survivor, not the dead holder


@pytest.mark.parametrize(("hook", "says"), [
    ({"url": "ftp://127.0.0.1/x", "events": ["failed"], "secret": SECRET}, "http"),
    ({"url": "http://127.0.0.1/x", "events": ["exploded"], "secret": SECRET},
     "unknown event"),
    ({"url": "http://127.0.0.1/x", "events": ["failed"], "secret": "short"},
     "secret must be"),
    ({"url": "http://127.0.0.1/x", "events": ["failed"]}, "secret must be"),
    ({"url": "http://127.0.0.1/x", "events": [], "secret": SECRET}, "events"),
    ({"url": "http://u:p@127.0.0.1/x", "events": ["failed"], "secret": SECRET}, "user"),
])
def test_a_malformed_webhook_is_a_400_naming_the_field(
    cluster: Cluster, hook: dict[str, Any], says: str
) -> None:
    cluster.start("scheduler", CHRONOSYNC_WEBHOOK_ALLOW="http://127.0.0.1/")
    cluster.wait_ready(coordinators=0, workers=0)
    for body in ({"command": "true"}, {"command": "true", "cron": "@daily"}):
        status, error = cluster.http("POST", "/schedule", {**body, "webhooks": [hook]})
        assert status == 400 and error["field"] == "webhooks", error
        assert says in error["error"], error
    status, error = cluster.http("POST", "/schedule", {"command": "true",
                                                       "webhooks": [hook] * 6})
    assert status == 400 and error["field"] == "webhooks"


def test_a_job_s_webhooks_are_edited_by_patch_under_the_same_rules(
    cluster: Cluster, receiver: Receiver
) -> None:
    cluster.start("scheduler", **allow(receiver, "/hooks/"))
    cluster.wait_ready(coordinators=0, workers=0)
    status, job = cluster.http("POST", "/schedule", {"command": "true", "cron": "@daily"})
    assert status == 201 and job["webhooks"] is None, job
    path = f"/jobs/{job['id']}"

    status, error = cluster.http("PATCH", path, {"webhooks": [receiver.hook("/other")]})
    assert status == 400 and error["field"] == "webhooks", error
    status, error = cluster.http("PATCH", path, {"webhooks": [
        {**receiver.hook("/hooks/ok"), "secret": "set"}]})  # what GET shows, sent back
    assert status == 400 and error["field"] == "webhooks", error

    status, edited = cluster.http("PATCH", path, {"webhooks": [
        receiver.hook("/hooks/ok", ["failed"])]})
    assert status == 200, edited
    assert edited["webhooks"] == [{"url": receiver.base + "/hooks/ok", "events": ["failed"],
                                   "secret": "set"}]
    # Another edit keeps them (with their secret), and runs now carry them to the task.
    status, edited = cluster.http("PATCH", path, {"name": "nightly"})
    assert status == 200 and edited["webhooks"][0]["events"] == ["failed"], edited
    status, made = cluster.http("POST", f"{path}/run")
    assert status == 201 and made["webhooks"] == edited["webhooks"], made
    stored = cluster.query("SELECT webhooks FROM tasks WHERE id = %s", (made["id"],))
    assert stored[0]["webhooks"][0]["secret"] == SECRET

    status, edited = cluster.http("PATCH", path, {"webhooks": None})
    assert status == 200 and edited["webhooks"] is None, edited


def test_only_allowed_urls_are_accepted_or_ever_called(
    cluster: Cluster, receiver: Receiver
) -> None:
    # Without an allowlist, webhooks are refused, saying how to enable them.
    plain = cluster.start("scheduler")
    cluster.wait_ready(coordinators=0, workers=0)
    status, error = cluster.http("POST", "/schedule", {
        "command": "true", "webhooks": [receiver.hook("/hooks/ok")]})
    assert status == 400 and error["field"] == "webhooks"
    assert "CHRONOSYNC_WEBHOOK_ALLOW" in error["error"]
    plain.signal(signal.SIGTERM)
    wait_for(lambda: not plain.alive(), timeout=30, what="the scheduler to stop")

    # The scheduler allows /hooks/ and /elsewhere/; the coordinator only /hooks/ (an
    # operator narrowed the list after the submission).
    cluster.start("scheduler", **allow(receiver, "/hooks/", "/elsewhere/"))
    cluster.start("coordinator", **allow(receiver, "/hooks/"))
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    for url in (receiver.base + "/other", receiver.base + "/hooks",
                receiver.base.replace("127.0.0.1", "127.0.0.1.evil.example") + "/hooks/", "http://10.0.0.1/hooks/"):
        status, error = cluster.http("POST", "/schedule", {
            "command": "true",
            "webhooks": [{"url": url, "events": ["succeeded"], "secret": SECRET}]})
        assert status == 400 and error["field"] == "webhooks", (url, error)
        assert "not under an allowed prefix" in error["error"]
    task = submit(cluster, {"command": "true", "webhooks": [
        receiver.hook("/elsewhere/x", ["succeeded"]),
        receiver.hook("/hooks/ok", ["succeeded"]),
        receiver.hook("/hooks/redirect", ["succeeded"])]})

    def settled() -> list[dict[str, Any]] | None:
        deliveries = cluster.task(task["id"])["deliveries"]
        done = [d for d in deliveries if d["state"] != "pending" or d["last_status"]]
        return deliveries if len(deliveries) == 3 and len(done) == 3 else None

    by_url = {d["url"]: d for d in wait_for(settled, timeout=30,
                                            what="both deliveries to settle")}
    assert by_url[receiver.base + "/hooks/ok"]["state"] == "delivered"
    refused = by_url[receiver.base + "/elsewhere/x"]
    assert refused["state"] == "given_up"
    assert "CHRONOSYNC_WEBHOOK_ALLOW" in refused["last_error"]
    # A redirect is an answer, not followed: a failed attempt, tried again later.
    redirected = by_url[receiver.base + "/hooks/redirect"]
    assert redirected["state"] == "pending" and redirected["last_status"] == 302
    assert receiver.on("/hooks/redirect")
    assert receiver.on("/elsewhere/x") == []
