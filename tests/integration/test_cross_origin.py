"""Requests a browser makes on behalf of another site are refused: an ``Origin`` that is
not the scheduler's own, ``Sec-Fetch-Site: cross-site`` or ``same-site``, and (without
a token) a ``Host`` that is not the scheduler's address, which is what DNS rebinding
looks like. curl's form-labelled JSON, which carries none of these, is still accepted.

First in raw HTTP, so that every header is exactly what a browser (or an attacker's
page) would send; then from a real browser (Debian's chromium): a page on another port of
the same host sends a no-cors POST of a submission (no preflight, and the cookie of a
signed-in dashboard included) and reads /tasks, and a page whose DNS name was rebound to
127.0.0.1 tries the same as same-origin requests. No task is made and nothing is read,
with a token or without, while curl still gets its 201."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from browser import chromium
from harness import Cluster, free_port, wait_for

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # browser.chromium() skips those tests, saying what to install
    pass

TOKEN = "cross-origin-test-token"
COMMAND = "echo sent-by-another-site"
WAIT_MS = 30_000
REBOUND = "rebound.test"  # the browser resolves it to 127.0.0.1, as a rebinding would
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SUBMISSION = json.dumps({"command": COMMAND}).encode()


def send(cluster: Cluster, method: str, path: str, *, headers: dict[str, str],
         body: bytes | None = None, host: str = "127.0.0.1") -> tuple[int, Any]:
    """One request on its own connection, with exactly the given headers (Host included,
    when given: http.client otherwise adds the address it connects to)."""
    conn = http.client.HTTPConnection(host, cluster.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host="Host" in headers,
                        skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        payload = response.read()
    finally:
        conn.close()
    return response.status, (json.loads(payload) if payload else None)


def curl_post(cluster: Cluster, **headers: str) -> tuple[int, Any]:
    """What `curl -X POST host:port/schedule -d '{...}'` sends: a form content type."""
    return send(cluster, "POST", "/schedule", body=SUBMISSION, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Accept": "*/*", **headers})


def tasks_made(cluster: Cluster) -> int:
    return cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"]


def serving(cluster: Cluster) -> None:
    def answers() -> bool:
        try:
            return send(cluster, "GET", "/healthz", headers={})[0] == 200
        except OSError:
            return False

    wait_for(answers, timeout=30, what="the scheduler")


def assert_refused(answer: tuple[int, Any], *words: str) -> None:
    status, body = answer
    assert status == 403, answer
    assert set(body) == {"error", "field"} and body["field"] is None, body
    for word in words:
        assert word in body["error"], body


def test_curls_form_labelled_json_without_origin_is_accepted(cluster: Cluster) -> None:
    cluster.start("scheduler")
    serving(cluster)
    status, body = curl_post(cluster, Host=f"localhost:{cluster.port}")
    assert status == 201, body
    assert curl_post(cluster)[0] == 201  # Host: 127.0.0.1:port
    assert tasks_made(cluster) == 2


@pytest.mark.parametrize("origin", [
    "http://localhost:{other}", "http://127.0.0.1:{other}", "http://evil.example",
    "null", "http://127.0.0.1:{port}.evil.example", "https://127.0.0.1",
])
def test_a_request_from_another_origin_is_refused(cluster: Cluster, origin: str) -> None:
    cluster.start("scheduler")
    serving(cluster)
    origin = origin.format(other=free_port(), port=cluster.port)
    assert_refused(curl_post(cluster, Origin=origin), "Origin", origin)
    assert_refused(send(cluster, "GET", "/tasks", headers={"Origin": origin}), "Origin")
    assert_refused(send(cluster, "POST", "/tasks/1/cancel", headers={"Origin": origin}))
    assert tasks_made(cluster) == 0


def test_a_request_from_the_schedulers_own_origin_is_accepted(cluster: Cluster) -> None:
    cluster.start("scheduler")
    serving(cluster)
    for host in (f"127.0.0.1:{cluster.port}", f"localhost:{cluster.port}"):
        status, body = curl_post(cluster, Host=host, Origin=f"http://{host}",
                                 **{"Sec-Fetch-Site": "same-origin"})
        assert status == 201, (host, body)
    # A TLS proxy in front: the browser's origin is https://<the Host it forwards>.
    status, _ = curl_post(cluster, Host=f"localhost:{cluster.port}",
                          Origin=f"https://localhost:{cluster.port}")
    assert status == 201
    assert tasks_made(cluster) == 3


@pytest.mark.parametrize("site", ["cross-site", "same-site", "Cross-Site"])
def test_a_request_a_browser_labels_as_from_another_site_is_refused(
    cluster: Cluster, site: str
) -> None:
    cluster.start("scheduler")
    serving(cluster)
    assert_refused(curl_post(cluster, **{"Sec-Fetch-Site": site}), "Sec-Fetch-Site")
    assert_refused(send(cluster, "GET", "/tasks", headers={"Sec-Fetch-Site": site}))
    assert tasks_made(cluster) == 0
    for allowed in ("same-origin", "none"):  # the page itself, or a typed-in address
        assert curl_post(cluster, **{"Sec-Fetch-Site": allowed})[0] == 201
    assert tasks_made(cluster) == 2


def test_without_a_token_a_foreign_host_name_is_refused(cluster: Cluster) -> None:
    """DNS rebinding: the attacker's name, now resolving to 127.0.0.1, is in the Host."""
    cluster.start("scheduler")
    serving(cluster)
    assert curl_post(cluster)[0] == 201
    for host in (f"evil.example:{cluster.port}", "evil.example", f"192.0.2.7:{cluster.port}",
                 "localhost.evil.example", f"127.0.0.1.evil.example:{cluster.port}"):
        assert_refused(send(cluster, "GET", "/tasks", headers={"Host": host}), "Host")
        assert_refused(curl_post(cluster, Host=host, Origin=f"http://{host}"), "Host")
        assert_refused(send(cluster, "GET", "/", headers={"Host": host}))
    assert tasks_made(cluster) == 1
    for host in (f"localhost:{cluster.port}", f"LOCALHOST:{cluster.port}", "localhost",
                 f"127.0.0.1:{cluster.port}", f"127.0.0.2:{cluster.port}",
                 f"[::1]:{cluster.port}"):
        assert send(cluster, "GET", "/tasks", headers={"Host": host})[0] == 200, host
    # Health checks stay open: a probe may use any name.
    for path in ("/healthz", "/readyz"):
        status, _ = send(cluster, "GET", path, headers={"Host": "evil.example"})
        assert status == 200, path


def test_listening_on_every_address_accepts_the_address_it_was_reached_on(
    cluster: Cluster
) -> None:
    """Without a token on 0.0.0.0 (CHRONOSYNC_INSECURE=1): loopback names, and the IP
    literal of the local address the connection came in on; never a DNS name."""
    cluster.start("scheduler", CHRONOSYNC_HTTP_ADDR=f"0.0.0.0:{cluster.port}",
                  CHRONOSYNC_INSECURE="1")
    serving(cluster)
    assert send(cluster, "GET", "/tasks", headers={"Host": f"localhost:{cluster.port}"}
                )[0] == 200
    assert_refused(send(cluster, "GET", "/tasks", headers={"Host": "evil.example"}), "Host")
    own = _non_loopback_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address to reach")
    status, _ = send(cluster, "GET", "/tasks", host=own,
                     headers={"Host": f"{own}:{cluster.port}"})
    assert status == 200
    # Another machine's address is not this one: a rebinding to it changes nothing here,
    # but the rule is "the address this connection came in on".
    assert_refused(send(cluster, "GET", "/tasks", host=own,
                        headers={"Host": f"192.0.2.254:{cluster.port}"}), "Host")
    assert_refused(send(cluster, "GET", "/tasks", host=own,
                        headers={"Host": f"{socket.gethostname()}.evil.example"}), "Host")


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet leaves: UDP connect only routes
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "192.0.2.254" else address


def test_with_a_token_any_host_is_fine_but_other_origins_are_not(cluster: Cluster) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    serving(cluster)
    behind_a_name = {"Host": "chronosync.internal.example", **AUTH}
    assert send(cluster, "GET", "/tasks", headers=behind_a_name)[0] == 200
    status, body = curl_post(cluster, **behind_a_name,
                             Origin="https://chronosync.internal.example")
    assert status == 201, body
    assert_refused(curl_post(cluster, **behind_a_name, Origin="https://evil.example"),
                   "Origin")
    assert_refused(curl_post(cluster, **AUTH, **{"Sec-Fetch-Site": "same-site"}))
    # Refused before the token is even looked at: a wrong token from a page is a 403 too.
    assert_refused(curl_post(cluster, Origin="http://evil.example"))
    assert tasks_made(cluster) == 1


def test_a_preflight_from_another_origin_gets_no_permission(cluster: Cluster) -> None:
    cluster.start("scheduler")
    serving(cluster)
    status, _ = send(cluster, "OPTIONS", "/schedule", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 403


# ---- in a real browser ----------------------------------------------------------

ATTACK = """async ([scheduler, command]) => {
  const outcome = {};
  try {
    // A CORS-safelisted content type (curl's own): no preflight, and JSON inside.
    await fetch(scheduler + "/schedule", {method: "POST", mode: "no-cors",
      credentials: "include", body: JSON.stringify({command}),
      headers: {"Content-Type": "application/x-www-form-urlencoded"}});
    outcome.post = "sent";
  } catch (e) {
    outcome.post = "failed: " + e;
  }
  try {
    const response = await fetch(scheduler + "/tasks", {credentials: "include"});
    outcome.read = await response.text();
  } catch (e) {
    outcome.read = null;
  }
  return outcome;
}"""
PAGE = b"<!doctype html><title>Elsewhere</title><p>Nothing to see here."


class _Page(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_site(cluster: Cluster) -> Iterator[str]:
    """Another origin on this host: http://127.0.0.1:<another port>. Not the port the
    cluster picked for its scheduler (free, so the kernel may hand it out again)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    while server.server_address[1] == cluster.port:
        replacement = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
        server.server_close()
        server = replacement
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    # The browser's own guard, Local Network Access (a public page may not reach
    # loopback without the user's consent), is switched off: these tests are about the
    # scheduler's defence, which must hold in browsers without it or after a click.
    with chromium(f"--host-resolver-rules=MAP {REBOUND} 127.0.0.1",
                  "--disable-features=LocalNetworkAccessChecks,"
                  "BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights",
                  ) as launched:
        yield launched


class Answers:
    """The statuses the scheduler answered, by path, as the browser's network log shows
    them: the page itself cannot see a cross-origin answer (CORS hides it), the log can."""

    def __init__(self, page: Page) -> None:
        self._urls: dict[str, str] = {}
        self._statuses: dict[str, int] = {}
        log = page.context.new_cdp_session(page)
        log.on("Network.requestWillBeSent",
               lambda e: self._urls.__setitem__(e["requestId"], e["request"]["url"]))
        log.on("Network.responseReceivedExtraInfo",
               lambda e: self._statuses.__setitem__(e["requestId"], e["statusCode"]))
        log.send("Network.enable")

    def to(self, url: str) -> list[int]:
        return [status for request, status in sorted(self._statuses.items())
                if self._urls.get(request) == url]


def sign_in(page: Page, cluster: Cluster) -> None:
    page.goto(cluster.url)
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("#live")).to_have_attribute("data-state", "ok")


@pytest.mark.parametrize("token", [None, TOKEN], ids=["without-token", "with-token"])
def test_a_page_on_another_port_can_neither_create_nor_read_a_task(
    browser: Browser, cluster: Cluster, other_site: str, token: str | None
) -> None:
    cluster.start("scheduler", **({"CHRONOSYNC_API_TOKEN": token} if token else {}))
    serving(cluster)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    if token:  # the user is signed in to the dashboard: the browser holds its cookie
        sign_in(page, cluster)
    answers = Answers(page)
    page.goto(other_site)
    outcome = page.evaluate(ATTACK, [cluster.url, COMMAND])
    seen = wait_for(lambda: _both(page, answers, cluster.url), timeout=30,
                    what="the scheduler's answers")
    context.close()
    assert seen == ([403], [403])
    assert outcome["read"] is None
    assert tasks_made(cluster) == 0
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    assert curl_post(cluster, **auth)[0] == 201


def test_a_rebound_dns_name_gets_nothing_from_a_scheduler_without_a_token(
    browser: Browser, cluster: Cluster
) -> None:
    cluster.start("scheduler")
    serving(cluster)
    rebound = f"http://{REBOUND}:{cluster.port}"
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    # The attacker's server answers the first load; then the name points at 127.0.0.1,
    # and the page's requests, same-origin to the browser, reach the scheduler.
    page.route(f"{rebound}/", lambda route: route.fulfill(
        status=200, content_type="text/html", body=PAGE.decode()))
    answers = Answers(page)
    page.goto(f"{rebound}/")
    outcome = page.evaluate(ATTACK, [rebound, COMMAND])
    seen = wait_for(lambda: _both(page, answers, rebound), timeout=30,
                    what="the scheduler's answers")
    context.close()
    assert seen == ([403], [403])
    assert outcome["read"] is not None and "Host" in outcome["read"], outcome
    assert COMMAND not in outcome["read"]
    assert tasks_made(cluster) == 0
    assert curl_post(cluster)[0] == 201


def _both(page: Page, answers: Answers, base: str) -> tuple[list[int], list[int]] | None:
    """(answers to /schedule, answers to /tasks) once both came. The network log's events
    reach us only while a call into the browser runs (Playwright's sync API dispatches
    them then): wait inside one, or an event that came after the page's last answer
    would never be seen."""
    page.wait_for_timeout(50)
    schedule, tasks = answers.to(f"{base}/schedule"), answers.to(f"{base}/tasks")
    return (schedule, tasks) if schedule and tasks else None


@pytest.mark.parametrize("token", [None, TOKEN], ids=["without-token", "with-token"])
def test_a_link_on_another_site_still_opens_the_dashboard(
    browser: Browser, cluster: Cluster, other_site: str, token: str | None
) -> None:
    cluster.start("scheduler", **({"CHRONOSYNC_API_TOKEN": token} if token else {}))
    serving(cluster)
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(other_site)
    page.evaluate("""url => {
      const link = Object.assign(document.createElement("a"), {href: url, id: "go"});
      link.textContent = "the cron dashboard";
      document.body.append(link);
    }""", cluster.url + "/")
    page.click("#go")
    page.wait_for_url(cluster.url + "/")
    if token:  # the SameSite=Strict cookie stays home: the sign-in form
        expect(page.locator("#token")).to_be_visible()
    else:
        expect(page.locator("#live")).to_have_attribute("data-state", "ok")
    context.close()
