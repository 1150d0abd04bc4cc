"""The recurring-job API and CLI: create, show in words with next runs, edit, delete."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from harness import Cluster, wait_for

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")


@pytest.fixture
def api(cluster: Cluster) -> Cluster:
    cluster.start_default(coordinators=1, workers=1)
    return cluster


def test_a_job_shows_its_expression_in_words_and_its_next_five_runs(api: Cluster) -> None:
    status, job = api.http("POST", "/schedule", {
        "command": "true", "cron": "*/5 * * * 1-5", "timezone": "Europe/Berlin",
        "name": "weekday-poll"})
    assert status == 201, job
    status, shown = api.http("GET", f"/jobs/{job['id']}")
    assert status == 200
    assert shown["description"] == "Every fifth minute of every hour on Monday through Friday"
    runs = [datetime.fromisoformat(t) for t in shown["next_runs"]]
    assert len(runs) == 5 and runs == sorted(runs)
    assert all(r.minute % 5 == 0 and r.second == 0 for r in runs)
    assert all(r.astimezone(ZoneInfo("Europe/Berlin")).weekday() < 5 for r in runs)
    assert shown["concurrency_policy"] == "allow" and shown["misfire_policy"] == "run_once"
    listed = api.http("GET", "/jobs")[1]["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]


@pytest.mark.parametrize(("body", "field"), [
    ({"command": "true", "cron": "61 * * * *"}, "cron"),
    ({"command": "true", "cron": "* * *"}, "cron"),
    ({"command": "true", "cron": "@sometimes"}, "cron"),
    ({"command": "true", "cron": "0 0 30 2 *"}, "cron"),
    ({"command": "true", "cron": "* * * * *", "timezone": "Mars/Olympus_Mons"}, "timezone"),
    ({"command": "true", "cron": "* * * * *", "scheduled_at": "2030-01-01T00:00:00Z"},
     "scheduled_at"),
    ({"command": "true", "cron": "* * * * *", "concurrency_policy": "sometimes"},
     "concurrency_policy"),
    ({"command": "true", "cron": "* * * * *", "misfire_policy": "retry"}, "misfire_policy"),
    ({"command": "true", "scheduled_at": "2030-01-01T00:00:00Z", "timezone": "UTC"},
     "timezone"),
])
def test_a_bad_job_is_a_400_naming_the_field(api: Cluster, body: dict, field: str) -> None:
    status, error = api.http("POST", "/schedule", body)
    assert status == 400, error
    assert error["field"] == field and error["error"]


def test_a_job_name_is_unique(api: Cluster) -> None:
    body = {"command": "true", "cron": "@daily", "name": "nightly"}
    assert api.http("POST", "/schedule", body)[0] == 201
    status, error = api.http("POST", "/schedule", {**body, "command": "false"})
    assert status == 409 and error["field"] == "name"


def test_an_edit_takes_effect_from_the_next_occurrence_not_yet_made(
    api: Cluster, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    _, job = api.http("POST", "/schedule", {"command": f"echo old >> {marker}",
                                            "cron": "* * * * * *"})
    wait_for(lambda: marker.exists(), timeout=10, what="the first tick")
    status, edited = api.http("PATCH", f"/jobs/{job['id']}",
                              {"command": f"echo new >> {marker}"})
    assert status == 200 and edited["command"].startswith("echo new")
    wait_for(lambda: "new" in marker.read_text().split(), timeout=15,
             what="a tick with the new command")
    api.http("PATCH", f"/jobs/{job['id']}", {"paused": True})
    rows = api.query("SELECT command FROM tasks WHERE job_id = %s AND started_at IS NOT NULL"
                     " ORDER BY scheduled_at", (job["id"],))
    commands = [r["command"].split()[1] for r in rows]
    # Old ticks first (those made ahead before the edit), then only new ones.
    assert commands == sorted(commands, key=lambda c: c == "new")
    status, error = api.http("PATCH", f"/jobs/{job['id']}", {"cron": "not a cron"})
    assert status == 400 and error["field"] == "cron"
    status, error = api.http("PATCH", f"/jobs/{job['id']}", {"idempotency_key": "x"})
    assert status == 400 and error["field"] == "idempotency_key"
    assert api.http("PATCH", "/jobs/987654", {"paused": True})[0] == 404


def test_deleting_a_job_keeps_the_tasks_it_made(api: Cluster) -> None:
    _, job = api.http("POST", "/schedule", {"command": "true", "cron": "* * * * * *"})
    wait_for(lambda: api.http("GET", f"/tasks?job_id={job['id']}")[1]["tasks"], timeout=10,
             what="the job's first tasks")
    status, body = api.http("DELETE", f"/jobs/{job['id']}")
    assert status == 204 and body is None
    assert api.http("GET", f"/jobs/{job['id']}")[0] == 404
    assert api.http("DELETE", f"/jobs/{job['id']}")[0] == 404
    history = api.http("GET", f"/tasks?job_id={job['id']}")[1]["tasks"]
    assert history and all(t["job_id"] == job["id"] for t in history)


def test_a_job_idempotency_key_replays_and_conflicts(api: Cluster) -> None:
    body = {"command": "true", "cron": "@hourly", "idempotency_key": "hourly-1"}
    first = api.http("POST", "/schedule", body)
    again = api.http("POST", "/schedule", body)
    changed = api.http("POST", "/schedule", {**body, "cron": "@daily"})
    assert first[0] == 201 and again[0] == 200 and again[1]["id"] == first[1]["id"]
    assert changed[0] == 409


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHRONOSYNC, "--url", url, *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_cli_manages_jobs(api: Cluster) -> None:
    made = cli(api.url, "--json", "schedule", "--cron", "0 9 * * MON-FRI", "--tz",
               "America/New_York", "--name", "standup", "--", "echo", "standup")
    assert made.returncode == 0, made.stderr
    job = json.loads(made.stdout)
    assert job["kind"] == "job" and job["timezone"] == "America/New_York"
    listing = cli(api.url, "jobs")
    assert listing.returncode == 0
    assert "standup" in listing.stdout and "Monday through Friday" in listing.stdout
    shown = cli(api.url, "job", str(job["id"]))
    assert "next_runs" in shown.stdout and "At 09:00" in shown.stdout
    paused = json.loads(cli(api.url, "pause", str(job["id"]), "-o", "json").stdout)
    assert paused["paused"] and paused["next_runs"] == [], "a paused job has no next runs"
    assert api.http("GET", f"/jobs/{job['id']}")[1]["next_runs"] == []
    assert "next_runs" not in cli(api.url, "pause", str(job["id"])).stdout
    resumed = json.loads(cli(api.url, "resume", str(job["id"]), "--json").stdout)
    assert not resumed["paused"] and len(resumed["next_runs"]) == 5
    assert cli(api.url, "delete", str(job["id"])).returncode == 0
    assert cli(api.url, "job", str(job["id"])).returncode == 1
    bad = cli(api.url, "schedule", "--cron", "99 * * * *", "--", "true")
    assert bad.returncode == 1 and "minute" in bad.stderr.lower()


def test_history_of_a_job_is_its_tasks(api: Cluster) -> None:
    _, job = api.http("POST", "/schedule", {"command": "true", "cron": "* * * * * *"})
    wait_for(lambda: len([t for t in api.http("GET", f"/tasks?job_id={job['id']}")[1]["tasks"]
                          if t["status"] == "succeeded"]) >= 2,
             timeout=15, what="two ticks to succeed")
    tasks = api.http("GET", f"/tasks?job_id={job['id']}&status=succeeded")[1]["tasks"]
    times = [datetime.fromisoformat(t["scheduled_at"]) for t in tasks]
    assert times == sorted(times, reverse=True)
    assert all(later - earlier >= timedelta(seconds=1)
               for later, earlier in pairwise(times))
