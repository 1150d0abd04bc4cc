"""The dashboard's pages to dig in, in a real browser (Debian's chromium, headless, driven
by Playwright) against a real cluster with an API token and labelled workers: a task's
page by its permalink (#/tasks/17) with its attempts, output, timings and the labels of
the worker that ran it, retried and cancelled from there; the task history filtered by
status, worker, job and text in the command, paged back and forth; a job's page with its
recent runs, its next runs in the job's own time zone (UTC on hover), run now, pause,
resume, edit and delete. Never a console error but the refusals asked for. Screenshots of
each page go to test-artifacts/ (dashboard-task.png, dashboard-history.png,
dashboard-job.png)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from browser import signed_in_api
from harness import Cluster, node_id, wait_for

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # browser.chromium() skips the test, saying what to install
    pass

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "dashboard-pages-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 30_000
FAR_FUTURE = "2099-01-01T00:00:00Z"


api = signed_in_api(TOKEN)


def _in_browser(browser: Browser, cluster: Cluster, name: str,
                scenario: Callable[[Page, list[str]], None], *, refusals: str = "") -> None:
    """Runs a scenario on a signed-in page; fails on any console error but the refused
    requests (status codes in ``refusals``) of the phase named "refused"."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000},
                                  timezone_id="Asia/Tokyo", locale="en-GB")
    context.add_cookies([{"name": "chronosync_token", "value": TOKEN, "url": cluster.url}])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console: list[tuple[str, str]] = []
    phase = ["page"]
    page.on("console", lambda m: console.append((phase[0], m.text)) if m.type == "error"
            else None)
    page.on("pageerror", lambda exc: console.append((phase[0], f"uncaught: {exc}")))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        scenario(page, phase)
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / f"{name}-failure.png"), full_page=True)
        raise
    finally:
        context.close()
    unexpected = [text for when, text in console
                  if not (when == "refused" and refusals and re.search(refusals, text))]
    assert unexpected == []


def _start(cluster: Cluster) -> tuple[str, str]:
    """A cluster with two labelled workers; their node ids (batch, web)."""
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    cluster.start("coordinator")
    batch = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=eu-1,role=batch")
    web = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=us-1,role=web")
    cluster.wait_ready(coordinators=1, workers=2)
    return node_id(cluster, batch), node_id(cluster, web)


def _finished(cluster: Cluster, task_id: int) -> dict[str, Any]:
    return wait_for(lambda: (lambda t: t if t["status"] in ("succeeded", "failed") else None)(
        api(cluster, "GET", f"/tasks/{task_id}")), timeout=30, what=f"task {task_id} to end")


def test_a_task_page_by_permalink_and_the_history_filtered_and_paged(
    browser: Browser, cluster: Cluster
) -> None:
    batch, web = _start(cluster)
    # A failure that took two attempts on the batch worker, its output kept.
    failing = api(cluster, "POST", "/schedule", {
        "command": "echo compacting; echo 'disk full: /var/lib/app' >&2; exit 4",
        "delivery": "at_least_once", "max_attempts": 2,
        "target": {"labels": {"role": "batch"}}, "name": "compact-store"})["id"]
    on_web = [api(cluster, "POST", "/schedule", {
        "command": f"curl -fsS https://example.invalid/ping/{n} || true",
        "target": {"labels": {"role": "web"}}})["id"] for n in range(3)]
    assert _finished(cluster, failing)["status"] == "failed"
    for task_id in on_web:
        _finished(cluster, task_id)
    later = api(cluster, "POST", "/schedule", {"command": "echo later",
                                              "scheduled_at": FAR_FUTURE})["id"]
    paged = [api(cluster, "POST", "/schedule", {"command": f"echo page {n}",
                                               "scheduled_at": FAR_FUTURE})["id"]
             for n in range(55)]

    def scenario(page: Page, phase: list[str]) -> None:
        # The permalink opens the task's own page: timings, attempts, output, worker.
        page.goto(f"{cluster.url}/#/tasks/{failing}")
        card = page.locator("#task")
        expect(card.locator("h2 .title")).to_have_text(f"#{failing}")
        expect(card.locator(".detail .status")).to_have_text("failed")
        expect(card.locator(".detail .cmd")).to_have_text(
            "echo compacting; echo 'disk full: /var/lib/app' >&2; exit 4")
        facts = card.locator(".facts")
        expect(facts.locator("dt")).to_contain_text(
            ["Status", "Name", "Delivery", "Scheduled", "Created", "Picked", "Started",
             "Waited", "Failed", "Took", "Exit code", "Error", "Worker", "Worker labels"])
        expect(facts).to_contain_text("at_least_once, attempt 2 of 2")
        expect(facts.locator("dd a", has_text=batch)).to_have_attribute(
            "href", f"#/tasks?worker={quote(batch, safe='')}")
        labels = facts.locator(".worker-labels .label")
        expect(labels.filter(has_text="zone=eu-1")).to_have_count(1)
        expect(labels.filter(has_text="role=batch")).to_have_count(1)
        expect(card.locator(".attempts tbody tr")).to_have_count(2)
        expect(card.locator(".attempts tbody tr").nth(1)).to_contain_text("exit 4")
        expect(card.locator(".task-output")).to_contain_text("disk full: /var/lib/app")
        # Times are the browser's local ones, UTC on hover.
        started = card.locator(".facts time").first
        expect(started).to_have_attribute("title", re.compile(
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
        expect(card.locator("button.cancel")).to_be_hidden()
        page.mouse.move(0, 0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-task.png"), full_page=True)

        # Retry from the task's page: the new task's page opens, naming the original.
        card.locator("button.retry").click()
        # The page was already at #/tasks/N: wait for another task's number.
        expect(page).to_have_url(re.compile(rf"#/tasks/(?!{failing}$)\d+$"))
        retried = int(page.url.rsplit("/", 1)[1])
        assert retried != failing and api(cluster, "GET", f"/tasks/{retried}")["retry_of"] \
            == failing
        expect(card.locator("h2 .title")).to_have_text(f"#{retried}")
        assert _finished(cluster, retried)["status"] == "failed"  # it fails as before
        expect(card.locator(".facts dd a", has_text=f"task #{failing}")).to_be_visible()

        # Cancel from a task's page, with a second click to confirm.
        page.goto(f"{cluster.url}/#/tasks/{later}")
        expect(card.locator(".detail .status")).to_have_text("scheduled")
        expect(card.locator("button.retry")).to_be_hidden()
        card.locator("button.cancel").click()
        expect(card.locator("button.cancel")).to_have_text("Confirm cancel")
        card.locator("button.cancel").click()
        expect(card.locator(".detail .status")).to_have_text("cancelled")
        assert api(cluster, "GET", f"/tasks/{later}")["status"] == "cancelled"
        expect(card.locator("button.retry")).to_be_visible()

        # A task that is not there says so (the browser notes each 404 it reads).
        phase[0] = "refused"
        page.goto(f"{cluster.url}/#/tasks/987654321")
        expect(card.locator("[data-missing]")).to_contain_text("There is no task #987654321")
        expect(card.locator("[data-detail]")).to_be_hidden()

        # The history: filter by status, then by worker (from the worker's own link).
        page.goto(f"{cluster.url}/#/tasks")
        history = page.locator("#history")
        _next_refresh(page)  # no read of the missing task is left in flight
        phase[0] = "page"
        rows = history.locator("[data-list] > li")
        expect(rows).to_have_count(50)
        history.locator('select[name="status"]').select_option("failed")
        history.locator("button[type=submit]").click()
        expect(page).to_have_url(re.compile(r"#/tasks\?status=failed$"))
        expect(rows).to_have_count(2)  # the failure and its retry
        expect(rows.locator(".status", has_text="failed")).to_have_count(2)
        page.goto(f"{cluster.url}/#/")
        page.locator(f'#nodes a.node-id[title^="{web}"]').click()
        expect(page).to_have_url(re.compile(r"#/tasks\?worker="))
        expect(history.locator('input[name="worker"]')).to_have_value(web)
        expect(rows).to_have_count(3)
        assert sorted(int(k) for k in rows.evaluate_all("rs => rs.map(r => r.dataset.key)")) \
            == sorted(on_web)
        # Text in the command, combined with the worker: none of the web's tasks compact.
        history.locator('input[name="text"]').fill("DISK FULL")
        history.locator("button[type=submit]").click()
        expect(history.locator("[data-empty]")).to_be_visible()
        history.locator('input[name="worker"]').fill("")
        history.locator("button[type=submit]").click()
        expect(rows).to_have_count(2)
        # A bad filter is refused by the API, which names it.
        phase[0] = "refused"
        history.locator('input[name="worker"]').fill("not a node id")
        history.locator("button[type=submit]").click()
        expect(page.locator("#history-message")).to_contain_text("worker must be a node id")
        expect(history.locator('input[name="worker"]')).to_have_attribute("aria-invalid", "true")
        phase[0] = "page"

        # Paged back through everything, 50 at a time, and forward again.
        history.locator("button.clear").click()
        history.locator('input[name="text"]').fill("echo page")
        history.locator("button[type=submit]").click()
        expect(rows).to_have_count(50)
        expect(rows.first).to_have_attribute("data-key", str(paged[-1]))
        history.locator("button.older").click()
        expect(page).to_have_url(re.compile(r"before=\d+"))
        expect(rows).to_have_count(5)
        expect(rows.last).to_have_attribute("data-key", str(paged[0]))
        expect(history.locator("button.older")).to_be_disabled()
        history.locator("button.newer").click()
        expect(rows).to_have_count(50)
        expect(history.locator("button.newer")).to_be_disabled()
        page.mouse.move(0, 0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-history.png"), full_page=True)
        # A row's id opens its page.
        rows.first.locator(".meta a.id").click()
        expect(page).to_have_url(re.compile(rf"#/tasks/{paged[-1]}$"))
        expect(card.locator(".detail .cmd")).to_have_text("echo page 54")

    _in_browser(browser, cluster, "dashboard-pages", scenario, refusals=r"\b(400|404)\b")


def test_a_job_page_shows_its_runs_and_next_runs_in_its_own_zone_and_acts_on_it(
    browser: Browser, cluster: Cluster
) -> None:
    _start(cluster)
    job = api(cluster, "POST", "/schedule", {
        "command": "echo exported report", "cron": "30 2 * * *",
        "timezone": "America/New_York", "name": "nightly-report"})
    other = api(cluster, "POST", "/schedule", {"command": "true", "cron": "0 0 1 1 *",
                                              "name": "yearly"})

    def scenario(page: Page, phase: list[str]) -> None:
        page.goto(cluster.url)
        page.locator(f'#jobs [data-key="{job["id"]}"] a.name').click()
        expect(page).to_have_url(re.compile(rf"#/jobs/{job['id']}$"))
        card = page.locator("#job")
        row = card.locator(f'[data-list] > li[data-key="{job["id"]}"]')
        expect(card.locator("h2 .title")).to_have_text("nightly-report")
        # The next runs in the job's own zone (the browser is in Tokyo), UTC on hover.
        runs = row.locator(".next-run time")
        expect(runs).to_have_count(3)
        for n, run in enumerate(job["next_runs"][:3]):
            expect(runs.nth(n)).to_contain_text("02:30:00")
            expect(runs.nth(n)).to_have_attribute("title", f"{run[:10]} {run[11:19]} UTC")
        expect(row.locator(".desc .tz")).to_have_text("America/New_York")
        expect(page.locator("#job-runs [data-empty]")).to_be_visible()

        # Run now: the run shows in the job's recent runs, with its output.
        row.locator("button.run").click()
        expect(page.locator("#notice .text")).to_have_text(
            re.compile(rf"Job #{job['id']} runs now: task #\d+\."))
        recent = page.locator("#job-runs [data-list] > li")
        expect(recent).to_have_count(1)
        expect(recent.locator(".status")).to_have_text("succeeded")
        recent.locator("summary").click()
        expect(recent.locator("pre")).to_have_text("exported report")
        expect(row.locator('.strip .cell[data-status="succeeded"]')).to_have_count(1)
        expect(page.locator("#job-runs a.all-runs")).to_have_attribute(
            "href", f"#/tasks?job_id={job['id']}")

        # Pause and resume.
        row.locator("button.toggle").click()
        expect(row.locator(".paused-badge")).to_be_visible()
        assert api(cluster, "GET", f"/jobs/{job['id']}")["paused"] is True
        row.locator("button.toggle").click()
        expect(row.locator(".paused-badge")).to_be_hidden()
        assert api(cluster, "GET", f"/jobs/{job['id']}")["paused"] is False

        # Edit: the new zone moves the next runs with it.
        row.locator("button.edit").click()
        form = row.locator("form.job-edit")
        form.locator('input[name="timezone"]').fill("Asia/Kolkata")
        form.locator("button.save").click()
        expect(form).to_be_hidden()
        edited = api(cluster, "GET", f"/jobs/{job['id']}")
        assert edited["timezone"] == "Asia/Kolkata"
        expect(row.locator(".desc .tz")).to_have_text("Asia/Kolkata")
        expect(runs.first).to_have_attribute(
            "title", f"{edited['next_runs'][0][:10]} {edited['next_runs'][0][11:19]} UTC")
        expect(runs.first).to_contain_text("02:30:00")
        page.mouse.move(0, 0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)

        # All its runs: the history filtered to the job.
        page.locator("#job-runs a.all-runs").click()
        expect(page.locator('#history select[name="job_id"]')).to_have_value(str(job["id"]))
        expect(page.locator("#history [data-list] > li")).to_have_count(1)
        page.go_back()

        # Delete, confirmed: the page says the job is gone; its run stays.
        phase[0] = "refused"  # the page's reads of the job now get 404s
        row.locator("button.delete").click()
        row.locator("button.delete").click()
        expect(card.locator("[data-missing]")).to_contain_text(f"There is no job #{job['id']}")
        assert cluster.http("GET", f"/jobs/{job['id']}", headers=AUTH)[0] == 404
        assert len(api(cluster, "GET", f"/tasks?job_id={job['id']}")["tasks"]) == 1
        assert api(cluster, "GET", f"/jobs/{other['id']}")["name"] == "yearly"

    _in_browser(browser, cluster, "dashboard-job-page", scenario, refusals=r"\b404\b")


def _next_refresh(page: Page) -> None:
    """Waits for the page to finish one more refresh (its clock in the header moves)."""
    live = page.locator("#live .text")
    shown = live.text_content()
    expect(live).not_to_have_text(shown or "")
