"""docs/dashboard.png, the README's picture of the dashboard, made from a cluster that
looks like one in use: recurring jobs with the names and commands of a small shop's
operations, a failure with its output, a run in progress, one waiting, and workers
labelled by zone and role. ``make screenshot`` runs it (not part of ``make test``: its
file name is not a test's); it uses the integration tests' cluster and browser.

The commands are small scripts on the workers' PATH that print what the real ones would:
the picture shows the dashboard, not a test's payloads."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from browser import signed_in_api
from harness import Cluster, wait_for

try:
    from playwright.sync_api import Browser, expect
except ImportError:  # browser.chromium() skips, saying what to install
    pass

PICTURE = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
TOKEN = "readme-screenshot-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 60_000
MAX_BYTES = 300_000
RUNS_EACH = 5

def _tonight_at(hour: int) -> str:
    """The next ``hour`` o'clock UTC: a one-off waiting for the night, as one would."""
    now = datetime.now(UTC)
    at = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return (at if at > now else at + timedelta(days=1)).isoformat()


# name -> what it prints, and its exit status.
SCRIPTS = {
    "pg-backup": ('echo "pg_dump: dumping database \\"$2\\""\n'
                  'echo "uploaded $2-$(date +%Y%m%d%H%M%S).dump (48.2 MB) to $4"', 0),
    "refresh-exchange-rates": ('echo "fetched 31 rates from $2 (EUR base)"', 0),
    "warm-cache": ('echo "warmed 1,204 pages of $2 in 3.1s"', 0),
    "sync-invoices": (
        'echo "sync-invoices 2.4.1: 312 invoices changed since $2"\n'
        'echo "posting batch 1/4 to https://erp.example.com/api/invoices"\n'
        'echo "ERROR: upstream answered 503 Service Unavailable (retry-after: 120)" >&2\n'
        'echo "aborting: 0 of 312 invoices synced" >&2', 2),
    "reindex-search": ('echo "reindexing $2"; sleep 600', 0),
}


api = signed_in_api(TOKEN)


def _scripts(folder: Path) -> str:
    folder.mkdir()
    for name, (body, status) in SCRIPTS.items():
        path = folder / name
        path.write_text(f"#!/bin/sh\n{body}\nexit {status}\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    folder.chmod(0o755)
    return f"{folder}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def test_the_readme_screenshot(browser: Browser, cluster: Cluster, tmp_path: Path) -> None:
    path = _scripts(tmp_path / "bin")
    tmp_path.chmod(0o755)
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    cluster.start("coordinator")
    for labels in ("zone=eu-west-1,role=batch", "zone=eu-west-1,role=web",
                   "zone=us-east-1,role=batch"):
        cluster.start("worker", CHRONOSYNC_WORKER_LABELS=labels,
                      CHRONOSYNC_WORKER_CAPACITY="4", PATH=path)
    cluster.wait_ready(coordinators=1, workers=3)

    jobs = [
        {"name": "orders-db-backup", "cron": "15 */4 * * *", "timezone": "Europe/Berlin",
         "command": "pg-backup --database orders --to s3://acme-backups/orders",
         "target": {"labels": {"role": "batch"}}, "concurrency_policy": "forbid"},
        {"name": "exchange-rates", "cron": "30 7 * * 1-5", "timezone": "America/New_York",
         "command": "refresh-exchange-rates --source ecb"},
        {"name": "warm-shop-cache", "cron": "*/10 6-23 * * *", "timezone": "Europe/Berlin",
         "command": "warm-cache --site shop.example.com",
         "target": {"labels": {"role": "web"}}},
        {"name": "invoice-sync", "cron": "0 */2 * * *", "timezone": "Europe/Berlin",
         "command": "sync-invoices --since yesterday --erp https://erp.example.com",
         "delivery": "at_least_once", "max_attempts": 2},
    ]
    made = {job["name"]: api(cluster, "POST", "/schedule", job) for job in jobs}
    # Some history for the frequent jobs' strips: runs by hand, one after another.
    for _ in range(RUNS_EACH):
        for name in ("orders-db-backup", "exchange-rates", "warm-shop-cache"):
            run = api(cluster, "POST", f"/jobs/{made[name]['id']}/run", {})
            wait_for(lambda run=run: api(cluster, "GET", f"/tasks/{run['id']}")["status"]
                     == "succeeded", timeout=30, what=f"a run of {name}")
    failing = api(cluster, "POST", f"/jobs/{made['invoice-sync']['id']}/run", {})
    api(cluster, "POST", "/schedule", {"command": "reindex-search --index products",
                                       "name": "reindex-products",
                                       "target": {"labels": {"zone": "us-east-1"}}})
    api(cluster, "POST", "/schedule", {"command": "pg-backup --database analytics --to "
                                                  "s3://acme-backups/analytics",
                                       "scheduled_at": _tonight_at(3),
                                       "name": "analytics-snapshot"})
    wait_for(lambda: api(cluster, "GET", f"/tasks/{failing['id']}")["status"] == "failed",
             timeout=60, what="the invoice sync to fail (twice)")

    context = browser.new_context(viewport={"width": 1280, "height": 1490},
                                  timezone_id="Europe/Berlin", locale="en-GB")
    context.add_cookies([{"name": "chronosync_token", "value": TOKEN, "url": cluster.url}])
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(cluster.url)
    expect(page.locator("#live")).to_have_attribute("data-state", "ok")
    for name in ("orders-db-backup", "exchange-rates", "warm-shop-cache"):
        row = page.locator(f'#jobs [data-key="{made[name]["id"]}"]')
        expect(row.locator('.strip .cell[data-status="succeeded"]')).to_have_count(RUNS_EACH)
    failure = page.locator(f'#failures [data-key="{failing["id"]}"]')
    expect(failure.locator(".meta .error")).to_have_text("exit 2")
    failure.locator("summary").click()
    expect(failure.locator("pre")).to_contain_text("503 Service Unavailable")
    expect(page.locator("#running .cmd", has_text="reindex-search")).to_be_visible()
    page.mouse.move(0, 0)
    page.evaluate("window.scrollTo(0, 0)")  # the sticky header at the top, where it belongs
    page.screenshot(path=str(PICTURE))  # the viewport: the page's top, the part that says most
    context.close()
    size = PICTURE.stat().st_size
    assert size < MAX_BYTES, f"{PICTURE.name} is {size} bytes: keep it under {MAX_BYTES}"
    assert re.match(rb"\x89PNG", PICTURE.read_bytes()[:4])
