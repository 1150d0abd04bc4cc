"""The dashboard in a real browser (Debian's chromium, headless, driven by Playwright)
against a real cluster with an API token: sign in (a wrong token is told so; the right one
is kept in a cookie no script can read), schedule from the page and watch the task
succeed, read a failure's output (as inert text), pause and resume a recurring job, create
a job and a far-future task from the form, cancel tasks, get signed out on a 401, and
never a console error (the Content-Security-Policy would report any inline code but the
sign-in page's own).

Full-page screenshots go to test-artifacts/ (git-ignored): dashboard.png, and a narrow
(phone) and a dark-scheme one; on a failure, dashboard-failure.png shows what the page
showed. docs/dashboard.png, for the README, is made by `make screenshot`
(readme_screenshot.py)."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

from browser import signed_in_api
from harness import Cluster, wait_for

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # browser.chromium() skips the test, saying what to install
    pass

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "dashboard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 30_000


api = signed_in_api(TOKEN)


def task_by_command(cluster: Cluster, command: str) -> dict[str, Any] | None:
    tasks = api(cluster, "GET", "/tasks?limit=1000")["tasks"]
    return next((t for t in tasks if t["command"] == command), None)


def test_the_dashboard_drives_a_real_cluster(browser: Browser, cluster: Cluster) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1,role=web")
    cluster.wait_ready(coordinators=1, workers=1)

    context = browser.new_context(viewport={"width": 1440, "height": 1000},
                                  timezone_id="Europe/Berlin", locale="en-GB")
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console: list[tuple[str, str]] = []  # (phase, text) of every console error
    phase = ["sign-in"]
    page.on("console", lambda m: console.append((phase[0], m.text)) if m.type == "error"
            else None)
    page.on("pageerror", lambda exc: console.append((phase[0], f"uncaught: {exc}")))
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard-failure.png").unlink(missing_ok=True)
    try:
        _scenario(cluster, page, phase)
    except BaseException:
        with contextlib.suppress(Exception):  # the failure itself matters more
            page.screenshot(path=str(ARTIFACTS / "dashboard-failure.png"), full_page=True)
        raise
    finally:
        context.close()
    # The only errors allowed: the browser's notes of the 401s that bring the sign-in form.
    unexpected = [text for when, text in console
                  if not (when in ("sign-in", "signed-out") and "401" in text)]
    assert unexpected == []


def _scenario(cluster: Cluster, page: Page, phase: list[str]) -> None:
    # Without the token the browser gets the sign-in form, which keeps it in a cookie.
    response = page.goto(cluster.url)
    assert response is not None and response.status == 401
    expect(page.locator("#token")).to_be_visible()
    page.fill("#token", "not-the-token")
    page.click("button[type=submit]")
    expect(page.locator("#message")).to_have_text("that is not the API token")
    phase[0] = "dashboard"
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator(".brand h1")).to_have_text("ChronoSync")
    # The server set the cookie: no script on the page can read it.
    cookie = next(c for c in page.context.cookies() if c["name"] == "chronosync_token")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/")
    assert "chronosync_token" not in page.evaluate("document.cookie")
    expect(page.locator("#live")).to_have_attribute("data-state", "ok")
    workers = page.locator('#node-counts [data-kind="worker"] .n')
    expect(workers).to_have_text("1")
    expect(page.locator('#node-counts [data-kind="coordinator"] .n')).to_have_text("1")
    expect(page.locator("#nodes [data-list] > li")).to_have_count(3)
    # The worker shows its labels, as CHRONOSYNC_WORKER_LABELS writes them.
    labels = page.locator('#nodes [data-state="alive"] .labels .label')
    expect(labels.filter(has_text="zone=eu-1")).to_have_count(1)
    expect(labels.filter(has_text="role=web")).to_have_count(1)
    expect(labels.filter(has_text=re.compile(r"^host="))).to_have_count(1)
    expect(page.locator("#recent [data-empty]")).to_be_visible()  # the empty states

    # Run a command now from the form; it reaches succeeded on the page.
    page.fill("#command", "echo from-the-dashboard")
    page.click("#schedule-button")
    expect(page.locator("#schedule-message")).to_have_text(re.compile(r"Task #\d+ scheduled"))
    expect(page.locator("#command")).to_have_value("")
    done = page.locator("#recent [data-list] > li", has_text="echo from-the-dashboard")
    expect(done.locator(".status")).to_have_text("succeeded")
    done.locator("summary").click()
    expect(done.locator("pre")).to_have_text("from-the-dashboard")
    task = task_by_command(cluster, "echo from-the-dashboard")
    assert task is not None and task["status"] == "succeeded", task

    # A failure shows its output, as text: markup in a command or its output stays inert.
    hostile = "echo '<img src=x onerror=window.__owned=1>'; echo boom >&2; exit 3"
    api(cluster, "POST", "/schedule", {"command": hostile})
    failure = page.locator("#failures [data-list] > li").first
    expect(failure.locator(".cmd")).to_have_text(hostile)
    expect(failure.locator(".meta .error")).to_have_text("exit 3")
    failure.locator("summary").click()
    expect(failure.locator("pre")).to_contain_text("<img src=x onerror=window.__owned=1>")
    expect(failure.locator("pre")).to_contain_text("boom")
    # Refreshes update rows in place: an open output stays open, a draft stays typed.
    page.fill("#name", "a draft")
    _next_refresh(page)
    _next_refresh(page)
    expect(failure.locator("details.output")).to_have_attribute("open", "")
    expect(page.locator("#name")).to_have_value("a draft")
    page.fill("#name", "")
    assert page.locator("#failures img").count() == 0
    assert page.evaluate("window.__owned") is None

    # A recurring job made through the API: its description, next runs and outcomes.
    job = api(cluster, "POST", "/schedule", {"command": "true", "cron": "* * * * * *",
                                            "name": "every-second"})
    row = page.locator(f'#jobs [data-list] > li[data-key="{job["id"]}"]')
    expect(row.locator(".name")).to_have_text("every-second")
    expect(row.locator(".desc .words")).to_have_text(job["description"])
    expect(row.locator(".next-run")).to_have_count(3)
    expect(row.locator('.strip .cell[data-status="succeeded"]').nth(2)).to_be_visible()
    expect(row.locator(".paused-badge")).to_be_hidden()
    row.locator("button.toggle").click()
    expect(row.locator(".paused-badge")).to_be_visible()
    expect(row.locator("button.toggle")).to_have_text("Resume")
    assert api(cluster, "GET", f"/jobs/{job['id']}")["paused"] is True
    row.locator("button.toggle").click()
    expect(row.locator(".paused-badge")).to_be_hidden()
    expect(row.locator("button.toggle")).to_have_text("Pause")
    assert api(cluster, "GET", f"/jobs/{job['id']}")["paused"] is False

    # A job made from the form, in a given time zone.
    page.check('input[name="mode"][value="cron"]')
    page.fill("#command", "/usr/local/bin/nightly-report")
    page.fill("#cron", "30 2 * * *")
    page.fill("#timezone", "America/New_York")
    page.fill("#name", "nightly-report")
    page.click("#schedule-button")
    expect(page.locator("#schedule-message")).to_have_text(re.compile(r"Job #\d+ created"))
    made = next(j for j in api(cluster, "GET", "/jobs")["jobs"] if j["name"] == "nightly-report")
    assert (made["cron"], made["timezone"]) == ("30 2 * * *", "America/New_York")
    expect(page.locator("#jobs .name", has_text="nightly-report")).to_be_visible()

    # A far-future task from the form: the local time (the browser is in Berlin) goes out
    # as RFC 3339 with its offset; then it is cancelled from the Upcoming list.
    page.check('input[name="mode"][value="at"]')
    page.fill("#command", "echo far-future")
    page.fill("#run-at", "2099-07-01T09:30:00")
    page.click("#schedule-button")
    expect(page.locator("#schedule-message")).to_have_text(re.compile(r"Task #\d+ scheduled"))
    far = wait_for(lambda: task_by_command(cluster, "echo far-future"), timeout=10,
                   what="the far-future task")
    assert far["scheduled_at"] == "2099-07-01T07:30:00Z"
    upcoming = page.locator(f'#upcoming [data-list] > li[data-key="{far["id"]}"]')
    expect(upcoming.locator(".status")).to_have_text("scheduled")
    upcoming.locator("button.cancel").click()
    expect(upcoming.locator("button.cancel")).to_have_text("Confirm cancel")
    upcoming.locator("button.cancel").click()
    expect(upcoming).to_have_count(0)
    assert api(cluster, "GET", f"/tasks/{far['id']}")["status"] == "cancelled"
    cancelled = page.locator(f'#recent [data-list] > li[data-key="{far["id"]}"] .status')
    expect(cancelled).to_have_text("cancelled")

    # A running task shows its worker and elapsed time (and something waits, for the
    # screenshot); then it is cancelled from the Running list, which stops its process.
    api(cluster, "POST", "/schedule", {"command": "pg_dump -Fc app > /backups/app.dump",
                                       "scheduled_at": "2099-01-01T00:00:00Z",
                                       "name": "yearly-dump"})
    expect(page.locator("#upcoming .cmd", has_text="pg_dump")).to_be_visible()
    sleeper = api(cluster, "POST", "/schedule", {"command": "sleep 60"})
    running = page.locator(f'#running [data-list] > li[data-key="{sleeper["id"]}"]')
    expect(running.locator(".status")).to_have_text("running")
    expect(running.locator(".meta")).to_contain_text("on worker-")
    expect(running.locator(".meta")).to_contain_text(re.compile(r"running [1-9][\d.]*s"))
    # The resumed job runs again (its newest outcome is green), for the screenshot too.
    expect(row.locator(".strip .cell").last).to_have_attribute("data-status", "succeeded")
    page.mouse.move(0, 0)  # no hover effect in the picture
    expect(page.locator("#notice")).to_be_hidden()  # the "cancelled" toast goes by itself
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "dashboard-narrow.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 1440, "height": 1000})
    page.screenshot(path=str(ARTIFACTS / "dashboard-dark.png"), full_page=True)
    running.locator("button.cancel").click()
    running.locator("button.cancel").click()
    expect(running).to_have_count(0)
    stopped = api(cluster, "GET", f"/tasks/{sleeper['id']}")
    assert stopped["status"] == "cancelled", stopped

    # Signed out (the cookie gone): the page's next request gets a 401 and it reloads
    # into the sign-in form.
    phase[0] = "signed-out"
    page.context.clear_cookies()
    expect(page.locator("#token")).to_be_visible()


def _next_refresh(page: Page) -> None:
    """Waits for the page to finish one more refresh (its clock in the header moves)."""
    live = page.locator("#live .text")
    shown = live.text_content()
    expect(live).not_to_have_text(shown or "")
