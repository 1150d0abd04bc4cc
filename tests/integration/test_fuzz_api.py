"""A hypothesis-driven fuzz of the HTTP API: random JSON shapes and types, random bytes,
deep and large bodies, random paths, methods and headers. No answer may be a 5xx, the
service must stay up, and tasks accepted before the fuzz must be unchanged after it."""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from harness import Cluster, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ_EXAMPLES = 1000
FIELDS = ["command", "scheduled_at", "cron", "timezone", "name", "delivery", "max_attempts",
          "timeout_s", "idempotency_key", "env", "paused", "concurrency_policy",
          "misfire_policy", "starting_deadline_s", "max_catchup"]
PATHS = ["/schedule", "/tasks", "/tasks/1", "/tasks/1/cancel", "/jobs", "/jobs/1", "/nodes",
         "/healthz", "/readyz", "/", "/tasks/", "//tasks", "/tasks/1/cancel/x"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "BREW"]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
# Bodies that look like submissions: known fields with values of any type.
submissions = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=10), json_values,
                              max_size=8)


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
        # Cancels and deletes aim at what the fuzz itself made, never at the kept tasks.
        if path.startswith(("/tasks/1", "/jobs/1")) and method in ("POST", "DELETE", "PATCH"):
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
