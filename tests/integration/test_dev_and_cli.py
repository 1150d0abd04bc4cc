"""The README's commands as a newcomer runs them: `chronosync dev` (what `make dev` runs)
and the `chronosync` command line against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import free_port, http, wait_for

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHRONOSYNC, "--url", url, *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def dev_cluster() -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="chronosync-devtest-"))
    env = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_DSN"}
    env.update(CHRONOSYNC_HTTP_ADDR=f"127.0.0.1:{port}", CHRONOSYNC_HEARTBEAT_S="0.2")
    log = open(data_dir / "dev.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([CHRONOSYNC, "dev", "--data-dir", str(data_dir)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            _, body = http(url, "GET", "/nodes")
        except OSError:
            return False
        kinds = [n["kind"] for n in body["nodes"] if n["state"] == "alive"]
        return kinds.count("coordinator") == 2 and kinds.count("worker") == 2

    try:
        wait_for(ready, timeout=60, what="`chronosync dev` to bring up its cluster")
        yield url, proc, data_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        log.close()
        print((data_dir / "dev.log").read_text()[-20000:])
        shutil.rmtree(data_dir, ignore_errors=True)


def test_dev_runs_the_seed_example_and_stops_every_process_on_sigterm(
    dev_cluster: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, proc, data_dir = dev_cluster
    india = timezone(timedelta(hours=5, minutes=30))
    due = (datetime.now(UTC) + timedelta(seconds=2)).astimezone(india).replace(microsecond=0)
    status, task = http(url, "POST", "/schedule",
                        raw=json.dumps({"command": "echo hello",
                                        "scheduled_at": due.isoformat()}).encode(),
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 201, task

    def finished() -> dict | None:
        body = http(url, "GET", f"/tasks/{task['id']}")[1]
        return body if body["status"] in ("succeeded", "failed") else None

    done = wait_for(finished, timeout=30, what="the seed example to run")
    assert done["status"] == "succeeded" and done["output"] == "hello\n"

    pids = [n["pid"] for n in http(url, "GET", "/nodes")[1]["nodes"]]
    postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
    assert len(pids) == 5 and all(alive(p) for p in [*pids, postmaster])
    # The live status line and the dashboard's address (printed every few seconds).
    wait_for(lambda: "nodes alive 5/5" in (data_dir / "dev.log").read_text(), timeout=30,
             what="dev's live status line")
    assert "dashboard http://" in (data_dir / "dev.log").read_text()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    leftovers = [p for p in [*pids, postmaster] if alive(p)]
    assert not leftovers, f"processes left behind: {leftovers}"


def test_the_cli_schedules_lists_shows_and_cancels(
    dev_cluster: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, _, _ = dev_cluster
    scheduled = cli(url, "--json", "schedule", "--at", "2099-01-01T00:00:00+05:30", "--",
                    "echo", "later")
    assert scheduled.returncode == 0, scheduled.stderr
    task = json.loads(scheduled.stdout)
    assert task["command"] == "echo later"
    assert task["scheduled_at"] == "2098-12-31T18:30:00Z"

    listing = cli(url, "tasks")
    assert listing.returncode == 0
    header, *rows = listing.stdout.splitlines()
    assert header.split()[:2] == ["ID", "STATUS"]
    assert any(row.split()[:2] == [str(task["id"]), "scheduled"] for row in rows)

    shown = cli(url, "--json", "task", str(task["id"]))
    assert json.loads(shown.stdout)["id"] == task["id"]
    cancelled = cli(url, "--json", "cancel", str(task["id"]))
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"

    nodes = cli(url, "--json", "nodes")
    assert {n["kind"] for n in json.loads(nodes.stdout)["nodes"]} == {
        "scheduler", "coordinator", "worker"}

    missing = cli(url, "task", "999999")
    assert missing.returncode == 1 and "404" in missing.stderr
    unreachable = cli(f"http://127.0.0.1:{free_port()}", "tasks")
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr
    usage = cli(url, "schedule")
    assert usage.returncode == 2
