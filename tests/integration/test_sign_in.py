"""The dashboard's sign-in and what every response tells a browser: the token is kept in
a cookie set by the server (HttpOnly, SameSite=Strict, Secure behind TLS), never by a
script; no response may be framed or sniffed, and the pages run only the scheduler's own
scripts."""

from __future__ import annotations

import http.client
import json
from http.cookies import SimpleCookie
from typing import Any

from harness import Cluster, wait_for

TOKEN = "sign-in-test-token"


def sign_in(cluster: Cluster, body: Any, **headers: str
            ) -> tuple[http.client.HTTPResponse, Any]:
    """POST /session: the response (for its status and headers) and its JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        conn.request("POST", "/session", body=json.dumps(body),
                     headers={"Content-Type": "application/json", **headers})
        response = conn.getresponse()
        return response, json.loads(response.read())
    finally:
        conn.close()


def serving(cluster: Cluster) -> None:
    def answers() -> bool:
        try:
            return cluster.http("GET", "/healthz")[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout=30, what="the scheduler")


def headers_of(cluster: Cluster, method: str, path: str, **headers: str
               ) -> tuple[int, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.headers
    finally:
        conn.close()


def test_every_response_refuses_framing_sniffing_and_foreign_scripts(
    cluster: Cluster
) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    serving(cluster)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for method, path, headers, status in (
        ("GET", "/", auth, 200), ("GET", "/static/app.js", auth, 200),
        ("GET", "/tasks", auth, 200), ("GET", "/healthz", {}, 200),
        ("GET", "/", {"Accept": "text/html"}, 401),  # the sign-in page
        ("GET", "/tasks", {}, 401), ("GET", "/nowhere", auth, 404),
        ("GET", "/tasks", {"Origin": "http://evil.example"}, 403),
    ):
        got, answer = headers_of(cluster, method, path, **headers)
        assert got == status, (path, got)
        policy = [p.strip() for p in answer["Content-Security-Policy"].split(";")]
        assert "frame-ancestors 'none'" in policy and "default-src 'self'" in policy, path
        assert "object-src 'none'" in policy and "base-uri 'none'" in policy
        assert not any("unsafe-inline" in p or "unsafe-eval" in p for p in policy)
        assert answer["X-Frame-Options"] == "DENY", path
        assert answer["X-Content-Type-Options"] == "nosniff", path


def test_signing_in_sets_an_httponly_strict_cookie_that_authenticates(
    cluster: Cluster
) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    serving(cluster)
    wrong, said = sign_in(cluster, {"token": "not-it"})
    assert wrong.status == 401 and wrong.headers["Set-Cookie"] is None
    assert said["field"] == "token" and said["error"]
    for bad, field in (({}, "token"), ({"token": 7}, "token"), ([TOKEN], "token"),
                       ({"token": TOKEN, "admin": True}, "admin")):
        answer, said = sign_in(cluster, bad)
        assert answer.status == 400 and answer.headers["Set-Cookie"] is None, bad
        assert said["field"] == field, (bad, said)

    right, said = sign_in(cluster, {"token": TOKEN})
    assert said == {"signed_in": True}
    assert right.status == 200
    assert right.headers["Cache-Control"] == "no-store"
    cookie = right.headers["Set-Cookie"]
    attributes = {part.strip().split("=")[0].lower(): part.strip()
                  for part in cookie.split(";")[1:]}
    assert set(attributes) == {"path", "httponly", "samesite"}, cookie
    assert attributes["path"] == "Path=/" and attributes["samesite"] == "SameSite=Strict"
    jar = SimpleCookie()
    jar.load(cookie)
    value = jar["chronosync_token"].value
    status, body = cluster.http("GET", "/tasks",
                                headers={"Cookie": f"chronosync_token={value}"})
    assert status == 200 and body == {"tasks": [], "next": None}

    # Behind a TLS proxy the cookie only ever travels over TLS.
    behind_tls, _ = sign_in(cluster, {"token": TOKEN}, **{"X-Forwarded-Proto": "https"})
    assert behind_tls.status == 200
    assert "Secure" in [p.strip() for p in behind_tls.headers["Set-Cookie"].split(";")]


def test_the_sign_in_page_sets_no_cookie_itself(cluster: Cluster) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    serving(cluster)
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Accept": "text/html"})
        response = conn.getresponse()
        page = response.read().decode()
    finally:
        conn.close()
    assert response.status == 401 and "<form" in page
    assert "document.cookie" not in page and "/session" in page


def test_without_a_token_there_is_nothing_to_sign_in_to(cluster: Cluster) -> None:
    cluster.start("scheduler")
    serving(cluster)
    answer, _ = sign_in(cluster, {"token": "anything"})
    assert answer.status == 404 and answer.headers["Set-Cookie"] is None
