"""The dashboard's runs by hand and job actions in a real browser (Debian's chromium,
headless, driven by Playwright) against a real cluster with an API token: retry a failed
task, run a job now (and be told why a forbid job refuses a second run), edit a job
(and be told which field is wrong), delete a job; never a console error but the refusals
asked for. The page is left in test-artifacts/dashboard-run-retry.png, a job's row with its
edit form open in dashboard-job-edit.png."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from browser import signed_in_api
from harness import Cluster, wait_for

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # browser.chromium() skips the test, saying what to install
    pass

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "dashboard-run-retry-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 30_000
YEARLY = "0 0 1 1 *"


api = signed_in_api(TOKEN)


def test_the_dashboard_retries_tasks_and_runs_edits_and_deletes_jobs(
    browser: Browser, cluster: Cluster
) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    cluster.start("coordinator")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    context.add_cookies([{"name": "chronosync_token", "value": TOKEN, "url": cluster.url}])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    console: list[tuple[str, str]] = []
    phase = ["dashboard"]
    page.on("console", lambda m: console.append((phase[0], m.text)) if m.type == "error"
            else None)
    page.on("pageerror", lambda exc: console.append((phase[0], f"uncaught: {exc}")))
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        _scenario(cluster, page, phase)
        page.mouse.move(0, 0)
        page.screenshot(path=str(ARTIFACTS / "dashboard-run-retry.png"), full_page=True)
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(ARTIFACTS / "dashboard-run-retry-failure.png"),
                            full_page=True)
        raise
    finally:
        context.close()
    # The browser notes each refused request; only those the scenario asked for may be.
    unexpected = [text for when, text in console
                  if not (when == "refused" and re.search(r"\b(400|409)\b", text))]
    assert unexpected == []


def _scenario(cluster: Cluster, page: Page, phase: list[str]) -> None:
    page.goto(cluster.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "ok")

    # Retry a failed task from the failures list: a new task, naming the one it retries.
    failed = api(cluster, "POST", "/schedule", {"command": "echo try; exit 7"})
    row = page.locator(f'#failures [data-list] > li[data-key="{failed["id"]}"]')
    expect(row.locator(".meta .error")).to_have_text("exit 7")
    row.locator("button.retry").click()
    expect(page.locator("#notice .text")).to_have_text(
        re.compile(rf"Task #{failed['id']} retried as task #\d+\."))
    retry = wait_for(lambda: next((t for t in api(cluster, "GET", "/tasks")["tasks"]
                                   if t["retry_of"] == failed["id"]), None),
                     timeout=10, what="the retry")
    assert retry["command"] == failed["command"]
    retried = page.locator(f'#recent [data-list] > li[data-key="{retry["id"]}"]')
    expect(retried.locator(".meta")).to_contain_text(f"retry of #{failed['id']}")
    expect(retried.locator(".status")).to_have_text("failed")
    # A task still running has no Retry button.
    sleeper = api(cluster, "POST", "/schedule", {"command": "sleep 300"})
    running = page.locator(f'#recent [data-list] > li[data-key="{sleeper["id"]}"]')
    expect(running.locator(".status")).to_have_text("running")
    expect(running.locator("button.retry")).to_be_hidden()
    expect(retried.locator("button.retry")).to_be_visible()

    # Run a job now; a second run of a forbid job while the first runs is refused, why said.
    job = api(cluster, "POST", "/schedule", {"command": "sleep 300", "cron": YEARLY,
                                            "name": "yearly-backup",
                                            "concurrency_policy": "forbid"})
    job_row = page.locator(f'#jobs [data-list] > li[data-key="{job["id"]}"]')
    expect(job_row.locator(".name")).to_have_text("yearly-backup")
    job_row.locator("button.run").click()
    expect(page.locator("#notice .text")).to_have_text(
        re.compile(rf"Job #{job['id']} runs now: task #\d+\."))
    made = api(cluster, "GET", f"/tasks?job_id={job['id']}")["tasks"]
    assert len(made) == 1, made
    assert api(cluster, "GET", f"/jobs/{job['id']}")["next_runs"] == job["next_runs"]
    wait_for(lambda: api(cluster, "GET", f"/tasks/{made[0]['id']}")["status"] == "running",
             timeout=30, what="the job's run to start")
    phase[0] = "refused"
    job_row.locator("button.run").click()
    expect(page.locator("#notice .text")).to_have_text(re.compile(
        rf"Could not run now: job {job['id']} has concurrency_policy forbid and its task "
        rf"{made[0]['id']} is running"))
    assert len(api(cluster, "GET", f"/tasks?job_id={job['id']}")["tasks"]) == 1

    # Edit: a bad cron is named in the form; a good edit is saved and shown.
    job_row.locator("button.edit").click()
    form = job_row.locator("form.job-edit")
    expect(form).to_be_visible()
    expect(form.locator('input[name="command"]')).to_have_value("sleep 300")
    expect(form.locator('select[name="concurrency_policy"]')).to_have_value("forbid")
    form.locator('input[name="cron"]').fill("61 * * * *")
    form.locator("button.save").click()
    expect(form.locator(".message")).to_contain_text("minute")
    expect(form.locator('input[name="cron"]')).to_have_attribute("aria-invalid", "true")
    phase[0] = "dashboard"
    _next_refresh(page)  # a refresh leaves what is typed alone
    expect(form.locator('input[name="cron"]')).to_have_value("61 * * * *")
    page.mouse.move(0, 0)
    job_row.screenshot(path=str(ARTIFACTS / "dashboard-job-edit.png"))
    form.locator('input[name="cron"]').fill("30 4 * * *")
    form.locator('input[name="command"]').fill("/usr/local/bin/backup --full")
    form.locator('select[name="concurrency_policy"]').select_option("replace")
    form.locator("button.save").click()
    expect(form).to_be_hidden()
    expect(page.locator("#notice .text")).to_have_text(f"Job #{job['id']} saved.")
    edited = api(cluster, "GET", f"/jobs/{job['id']}")
    assert (edited["cron"], edited["command"], edited["concurrency_policy"], edited["name"]) \
        == ("30 4 * * *", "/usr/local/bin/backup --full", "replace", "yearly-backup")
    expect(job_row.locator(".cmd")).to_have_text("/usr/local/bin/backup --full")
    expect(job_row.locator(".desc .expr")).to_have_text("30 4 * * *")

    # Delete asks for a second click; then the job is gone and its tasks stay.
    job_row.locator("button.delete").click()
    expect(job_row.locator("button.delete")).to_have_text("Confirm delete")
    assert api(cluster, "GET", f"/jobs/{job['id']}")["id"] == job["id"]
    job_row.locator("button.delete").click()
    expect(job_row).to_have_count(0)
    assert cluster.http("GET", f"/jobs/{job['id']}", headers=AUTH)[0] == 404
    assert len(api(cluster, "GET", f"/tasks?job_id={job['id']}")["tasks"]) == 1
    expect(page.locator("#jobs [data-empty]")).to_be_visible()


def _next_refresh(page: Page) -> None:
    """Waits for the page to finish one more refresh (its clock in the header moves)."""
    live = page.locator("#live .text")
    shown = live.text_content()
    expect(live).not_to_have_text(shown or "")
