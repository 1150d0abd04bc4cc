"""Access control and containment: tokens, mutual TLS, unprivileged commands, allowlists,
bounded output, and SQL that stores what it is given as text."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from harness import (
    Cluster,
    as_unprivileged_user,
    free_port,
    http,
    node_id,
    unprivileged_user,
    wait_for,
)

from chronocore.rpc import worker_pb2, worker_pb2_grpc
from chronocore.tls import WORKER_TLS_NAME, TlsFiles, make_certs

TOKEN = "s3cret-token-for-tests"


def test_with_a_token_every_route_but_health_needs_it(cluster: Cluster) -> None:
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN)
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
    for path in ("/tasks", "/nodes", "/jobs", "/tasks/1"):
        status, body = cluster.http("GET", path)
        assert status == 401 and body["error"], path
        status, _ = cluster.http("GET", path, headers={"Authorization": "Bearer wrong"})
        assert status == 401
    status, body = cluster.http("POST", "/schedule", {"command": "true"})
    assert status == 401
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 0
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert cluster.http("GET", "/tasks", headers=auth)[0] == 200
    assert cluster.http("POST", "/schedule", {"command": "true"}, headers=auth)[0] == 201
    assert cluster.http("GET", "/healthz")[0] == 200
    assert cluster.http("GET", "/readyz")[0] == 200
    cli = subprocess.run([str(Path(sys.executable).parent / "chronosync"), "--url",
                          cluster.url, "tasks"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "CHRONOSYNC_API_TOKEN": TOKEN}, check=False)
    assert cli.returncode == 0, cli.stderr


def _answers(url: str) -> bool:
    try:
        return http(url, "GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_a_scheduler_without_a_token_refuses_a_public_address(cluster: Cluster) -> None:
    public = cluster.start("scheduler", CHRONOSYNC_HTTP_ADDR=f"0.0.0.0:{free_port()}")
    assert public.proc.wait(timeout=30) == 2
    log = public.log_path.read_text() if public.log_path else ""
    assert "CHRONOSYNC_API_TOKEN" in log
    allowed = cluster.start("scheduler", CHRONOSYNC_HTTP_ADDR=f"0.0.0.0:{cluster.port}",
                            CHRONOSYNC_INSECURE="1")
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the insecure scheduler")
    assert allowed.alive()


def test_a_scheduler_on_every_interface_advertises_its_host_name(cluster: Cluster) -> None:
    cluster.start("scheduler", CHRONOSYNC_HTTP_ADDR=f"0.0.0.0:{cluster.port}",
                  CHRONOSYNC_API_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def scheduler_addresses() -> list[str] | None:
        if not _answers(cluster.url):
            return None
        status, body = cluster.http("GET", "/nodes", headers=auth)
        assert status == 200, body
        return [n["address"] for n in body["nodes"] if n["kind"] == "scheduler"] or None

    addresses = wait_for(scheduler_addresses, timeout=30, what="the scheduler in /nodes")
    assert addresses == [f"{socket.gethostname()}:{cluster.port}"]


def test_a_worker_without_tls_refuses_a_public_address(cluster: Cluster) -> None:
    worker = cluster.start("worker", CHRONOSYNC_WORKER_ADDR="0.0.0.0:0")
    assert worker.proc.wait(timeout=30) == 2
    assert "TLS" in (worker.log_path.read_text() if worker.log_path else "")


def test_a_root_worker_will_not_run_commands_as_root_unless_told(cluster: Cluster) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: checks what a worker started as root does")
    worker = cluster.start("worker", CHRONOSYNC_ALLOW_ROOT="")
    assert worker.proc.wait(timeout=30) == 2
    assert "CHRONOSYNC_RUN_AS" in (worker.log_path.read_text() if worker.log_path else "")


def test_a_root_worker_runs_commands_as_the_configured_user(cluster: Cluster) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users")
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_ALLOW_ROOT="", CHRONOSYNC_RUN_AS="nobody")
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {"command": "id -un; id -u; echo $HOME"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "succeeded", task
    name, uid, _home = task["output"].split("\n")[:3]
    assert name == "nobody" and uid != "0"


def test_the_command_environment_holds_no_secret(cluster: Cluster, tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")["node"]
    tls = {"CHRONOSYNC_TLS_CA": str(certs.ca), "CHRONOSYNC_TLS_CERT": str(certs.cert),
           "CHRONOSYNC_TLS_KEY": str(certs.key)}
    cluster.start("scheduler", CHRONOSYNC_API_TOKEN=TOKEN, **tls)
    cluster.start("coordinator", **tls)
    cluster.start("worker", CHRONOSYNC_API_TOKEN=TOKEN, **tls)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    wait_for(lambda: cluster.query("SELECT 1 FROM nodes WHERE kind = 'worker'"), timeout=30,
             what="the worker")
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
    _, body = cluster.http("POST", "/schedule", {"command": "env"}, headers=auth)

    def finished() -> dict | None:
        task = cluster.http("GET", f"/tasks/{body['id']}", headers=auth)[1]
        return task if task["status"] in ("succeeded", "failed") else None

    task = wait_for(finished, timeout=30, what="env to run")
    assert task["status"] == "succeeded"
    output = task["output"]
    assert f"CHRONOSYNC_TASK_ID={body['id']}" in output
    for secret in (cluster.dsn, TOKEN, str(certs.key), str(certs.cert), "CHRONOSYNC_DSN",
                   "CHRONOSYNC_TLS"):
        assert secret not in output


def _reaper_of(worker_pid: int) -> int:
    def find() -> int | None:
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if int(ppid) == worker_pid and b"chronocore.reaper" in cmdline:
                return int(entry.name)
        return None

    return wait_for(find, timeout=30, what="the worker's reaper process")


def _probe(pids: dict[str, int], files: tuple[Path, ...] = ()) -> str:
    """A command that prints what it can read of these processes and files, and says
    which processes it could signal."""
    reads = " ".join(f"/proc/{pid}/environ" for pid in pids.values())
    paths = " ".join(str(f) for f in files)
    signals = "; ".join(f"kill -0 {pid} 2>/dev/null && echo signalled-{name}"
                        for name, pid in pids.items())
    return (f"for f in /proc/$PPID/environ {reads} {paths}; do cat $f 2>&1 | tr '\\0' ' ';"
            f" echo; done; {signals}; true")


def test_a_root_worker_s_commands_cannot_read_or_signal_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: a worker started as root runs commands as another user")
    certs = make_certs(tmp_path / "certs")["node"]
    tls = {"CHRONOSYNC_TLS_CA": str(certs.ca), "CHRONOSYNC_TLS_CERT": str(certs.cert),
           "CHRONOSYNC_TLS_KEY": str(certs.key)}
    cluster.start("scheduler", **tls)
    cluster.start("coordinator", **tls)
    worker = cluster.start("worker", CHRONOSYNC_ALLOW_ROOT="", CHRONOSYNC_RUN_AS="nobody",
                           CHRONOSYNC_API_TOKEN=TOKEN, **tls)
    cluster.wait_ready(coordinators=1, workers=1)
    pids = {"worker": worker.pid, "reaper": _reaper_of(worker.pid)}
    _, body = cluster.http("POST", "/schedule", {
        "command": _probe(pids, (certs.key, tmp_path / "certs" / "ca.key"))})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    output = task["output"]
    assert "Permission denied" in output, output
    key = certs.key.read_text().splitlines()[1]
    for secret in (cluster.dsn, TOKEN, "CHRONOSYNC_DSN", "CHRONOSYNC_API_TOKEN", key,
                   "signalled"):
        assert secret not in output, secret


@pytest.mark.parametrize("sandbox", [False, True], ids=["beside", "sandboxed"])
def test_commands_of_nodes_sharing_their_user_cannot_read_the_nodes_secrets(
    cluster: Cluster, sandbox: bool
) -> None:
    """``make dev`` as a user: every node and every command run as that user. The nodes
    are non-dumpable and drop their secrets from their environment, so no command reads
    the DSN or the token in /proc. Beside the nodes, a command can still signal them and
    read the user's files (the database's, say); in the sandbox (CHRONOSYNC_SANDBOX, what
    ``make dev`` uses where the kernel allows user namespaces) it can do neither."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the nodes as a user of the test's own")
    as_user = as_unprivileged_user()
    uid, gid = unprivileged_user()
    # Where the test's user can reach (pytest's temp dirs are root's alone).
    base = Path(tempfile.mkdtemp(prefix="chronosync-sandbox-"))
    base.chmod(0o755)
    hidden = base / "pgdata"
    hidden.mkdir()
    (hidden / "password").write_text("the-database-password\n")
    for path in (hidden, hidden / "password"):
        os.chown(path, uid, gid)
    env = {"CHRONOSYNC_API_TOKEN": TOKEN}
    worker_env = {**env, "CHRONOSYNC_SANDBOX": "1" if sandbox else "",
                  "CHRONOSYNC_SANDBOX_HIDE": str(hidden)}
    try:
        nodes = {kind: cluster.processes.start(
                     kind, env=worker_env if kind == "worker" else env, wrapper=as_user)
                 for kind in ("scheduler", "coordinator", "worker")}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: cluster.query("SELECT 1 FROM nodes WHERE kind = 'worker'"),
                 timeout=30, what="the worker")
        wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
        pids = {kind: node.pid for kind, node in nodes.items()}
        pids["reaper"] = _reaper_of(nodes["worker"].pid)

        def run(body: dict[str, Any]) -> dict[str, Any]:
            _, created = cluster.http("POST", "/schedule", body, headers=auth)

            def finished() -> dict[str, Any] | None:
                task = cluster.http("GET", f"/tasks/{created['id']}", headers=auth)[1]
                return task if task["status"] in ("succeeded", "failed") else None

            return wait_for(finished, timeout=30, what=f"task {created['id']} to end")

        output = run({"command": _probe(pids, (hidden / "password",))})["output"]
        for secret in (cluster.dsn, TOKEN, "CHRONOSYNC_DSN", "CHRONOSYNC_API_TOKEN"):
            assert secret not in output, (secret, output)
        if not sandbox:  # the probe does see what a command beside the nodes can do
            assert "signalled-worker" in output and "the-database-password" in output
            return
        assert "signalled" not in output and "the-database-password" not in output, output
        # The sandbox still runs commands as commands: their output, exit status and
        # environment, and a timeout that ends the whole group.
        done = run({"command": "echo out; echo err >&2; echo $CHRONOSYNC_TASK_ID; exit 3"})
        assert (done["error"], done["output"]) == ("exit 3", f"out\nerr\n{done['id']}\n")
        marker = f"sleep 3{uuid.uuid4().int % 1000:03d}"
        timed_out = run({"command": f"{marker} & {marker}", "timeout_s": 1})
        assert timed_out["error"] == "timeout", timed_out
        wait_for(lambda: not _processes_running(marker), timeout=10,
                 what=f"every {marker!r} to be gone")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _processes_running(cmdline: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and cmdline.encode() in (entry / "cmdline").read_bytes(
                    ).replace(b"\0", b" "):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_an_allowlist_refuses_other_commands_and_chained_ones(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_COMMAND_ALLOWLIST="echo\n/bin/true")
    cluster.wait_ready(coordinators=1, workers=1)
    marker = tmp_path / "pwned"
    ok = cluster.http("POST", "/schedule", {"command": "echo allowed"})[1]
    refused = [cluster.http("POST", "/schedule", {"command": c})[1] for c in
               (f"touch {marker}", f"echo hi; touch {marker}", f"echo $(touch {marker})")]
    assert cluster.wait_task(ok["id"], ("succeeded", "failed"))["output"] == "allowed\n"
    for body in refused:
        task = cluster.wait_task(body["id"], ("succeeded", "failed"))
        assert task["status"] == "failed"
        assert task["error"] == "spawn: command not allowed on this worker"
        assert task["started_at"] is None and task["attempts"] == []
    assert not marker.exists()


def test_env_names_that_change_what_runs_are_refused_at_submission(
    cluster: Cluster, tmp_path: Path
) -> None:
    script = tmp_path / "report.sh"
    script.write_text("#!/bin/bash\necho report\n")
    script.chmod(0o755)
    marker = tmp_path / "pwned"
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_COMMAND_ALLOWLIST=str(script))
    cluster.wait_ready(coordinators=1, workers=1)
    for name in ("BASH_ENV", "LD_PRELOAD", "PATH", "PYTHONWARNINGS", "NODE_OPTIONS",
                 "PERL5OPT", "GIT_CONFIG_COUNT", "BROWSER", "ENV"):
        status, body = cluster.http("POST", "/schedule", {
            "command": str(script), "env": {name: f"$(touch {marker})"}})
        assert (status, body["field"]) == (400, "env"), (name, body)
    assert cluster.query("SELECT count(*) AS n FROM tasks")[0]["n"] == 0
    assert not marker.exists()


def test_an_allowlisted_worker_runs_only_env_names_it_allows(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", CHRONOSYNC_COMMAND_ALLOWLIST="printenv",
                  CHRONOSYNC_ENV_ALLOWLIST="REPORT_*, DAY")
    cluster.wait_ready(coordinators=1, workers=1)
    ok = cluster.http("POST", "/schedule", {
        "command": "printenv REPORT_KIND DAY", "env": {"REPORT_KIND": "weekly",
                                                       "DAY": "mon"}})[1]
    refused = cluster.http("POST", "/schedule", {
        "command": "printenv PROMPT_COMMAND", "env": {"PROMPT_COMMAND": "id"}})[1]
    assert cluster.wait_task(ok["id"], ("succeeded", "failed"))["output"] == "weekly\nmon\n"
    task = cluster.wait_task(refused["id"], ("succeeded", "failed"))
    assert task["status"] == "failed" and task["started_at"] is None
    assert task["error"] == "spawn: env PROMPT_COMMAND not allowed on this worker"


def test_commands_get_only_ordinary_variables_of_the_worker_environment(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker", PGPASSWORD="pg-secret-value",
                  AWS_SECRET_ACCESS_KEY="aws-secret-value", SITE_NAME="north",
                  CHRONOSYNC_PASS_ENV="SITE_*")
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {"command": "env"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "succeeded", task
    output = task["output"]
    assert "pg-secret-value" not in output and "PGPASSWORD" not in output
    assert "aws-secret-value" not in output and "AWS_SECRET_ACCESS_KEY" not in output
    assert "SITE_NAME=north\n" in output and "\nPATH=" in output


def test_output_capture_stays_bounded_for_a_command_writing_a_lot(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {
        "command": "head -c 300000000 /dev/zero | tr '\\0' a; echo; echo the-end"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=120)
    assert task["status"] == "succeeded", {k: v for k, v in task.items() if k != "output"}
    assert len(task["output"].encode()) == 64 * 1024
    assert task["output"].endswith("\nthe-end\n")


def test_output_of_bytes_that_are_not_utf8_is_stored_within_the_same_bound(
    cluster: Cluster,
) -> None:
    """Each invalid byte is stored as U+FFFD, three bytes of UTF-8: the bound holds on the
    stored text, not on the bytes read."""
    cluster.start_default(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {
        "command": "head -c 300000 /dev/zero | tr '\\0' '\\377'; echo; echo the-end"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"), timeout=60)
    assert task["status"] == "succeeded", task
    assert task["output"].endswith("\ufffd\nthe-end\n")
    stored = cluster.query("SELECT octet_length(output) AS n FROM tasks WHERE id = %s",
                           (body["id"],))
    assert 64 * 1024 - 2 <= stored[0]["n"] <= 64 * 1024


INJECTIONS = [
    "'; DROP TABLE tasks; --",
    "\" OR 1=1 --",
    "$$; DELETE FROM nodes; $$",
    "Robert'); DROP TABLE jobs;--",
    "%(command)s %s {0} \\x00 \\' \\\\",
    "🙂 ünïcödé ' \" ` ; --",
]


def test_injection_strings_in_every_field_are_stored_as_text(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
    made = []
    for i, text in enumerate(INJECTIONS):
        body = {"command": f"echo {text}", "name": text, "idempotency_key": text,
                "env": {"X": text}, "scheduled_at": "2099-01-01T00:00:00Z"}
        status, task = cluster.http("POST", "/schedule", body)
        assert status == 201, task
        assert (task["command"], task["name"], task["idempotency_key"], task["env"]) == (
            body["command"], text, text, {"X": text})
        job_body = {"command": text, "cron": "@daily", "name": f"job {i} {text}"}
        status, job = cluster.http("POST", "/schedule", job_body)
        assert status == 201, job
        assert job["name"] == job_body["name"] and job["command"] == text
        made.append(task["id"])
        quoted = quote(text, safe="")
        for path in (f"/tasks?status={quoted}", f"/tasks?job_id={quoted}",
                     f"/tasks/{quoted}", f"/jobs/{quoted}"):
            assert cluster.http("GET", path)[0] < 500
    stored = cluster.query("SELECT name FROM tasks ORDER BY id")
    assert [r["name"] for r in stored] == INJECTIONS
    tables = {r["t"] for r in cluster.query(
        "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'")}
    assert {"tasks", "jobs", "nodes", "task_attempts"} <= tables


def _dispatch(address: str, credentials: grpc.ChannelCredentials | None,
              command: str) -> grpc.StatusCode | None:
    """Offer a task to a worker directly; the gRPC status code on failure, None if taken."""
    task = worker_pb2.Task(id=1, command=command, claim_token=str(uuid.uuid4()),
                           scheduled_at="2026-01-01T00:00:00Z")
    options = [("grpc.ssl_target_name_override", WORKER_TLS_NAME)]
    channel = (grpc.insecure_channel(address) if credentials is None
               else grpc.secure_channel(address, credentials, options=options))
    with channel:
        try:
            worker_pb2_grpc.WorkerStub(channel).Dispatch(
                worker_pb2.DispatchRequest(coordinator_id="intruder", tasks=[task]),
                timeout=5)
        except grpc.RpcError as exc:
            return exc.code()
    return None


def test_a_tls_worker_refuses_dispatches_without_a_cluster_certificate(
    cluster: Cluster, tmp_path: Path
) -> None:
    ours = make_certs(tmp_path / "ours")["node"]
    theirs = make_certs(tmp_path / "theirs")["node"]
    tls = {"CHRONOSYNC_TLS_CA": str(ours.ca), "CHRONOSYNC_TLS_CERT": str(ours.cert),
           "CHRONOSYNC_TLS_KEY": str(ours.key)}
    cluster.start("scheduler", **tls)
    cluster.start("coordinator", **tls)
    worker = cluster.start("worker", **tls)
    cluster.wait_ready(coordinators=1, workers=1)
    address = cluster.query("SELECT address FROM nodes WHERE id = %s",
                            (node_id(cluster, worker),))[0]["address"]

    # The cluster itself works over mutual TLS.
    _, body = cluster.http("POST", "/schedule", {"command": "echo over-tls"})
    assert cluster.wait_task(body["id"], ("succeeded", "failed"))["output"] == "over-tls\n"

    marker = tmp_path / "intruder-ran"
    no_cert = grpc.ssl_channel_credentials(root_certificates=ours.ca.read_bytes())
    other_ca = grpc.ssl_channel_credentials(
        root_certificates=ours.ca.read_bytes(), private_key=theirs.key.read_bytes(),
        certificate_chain=theirs.cert.read_bytes())
    for credentials in (None, no_cert, other_ca):
        code = _dispatch(address, credentials, f"touch {marker}")
        assert code == grpc.StatusCode.UNAVAILABLE, code
    assert not marker.exists()
    assert "intruder" not in worker.log_path.read_text()  # type: ignore[union-attr]
    # A proper cluster certificate gets through (the claim token is not the task's, so the
    # start is fenced off: still nothing runs).
    code = _dispatch(address, TlsFiles(ours.ca, ours.cert, ours.key).channel_credentials(),
                     f"touch {marker}")
    assert code is None
    wait_for(lambda: "start refused" in worker.log_path.read_text(),  # type: ignore[union-attr]
             timeout=10, what="the fenced start")
    assert not marker.exists()


def test_a_slow_client_loses_its_connection_and_the_api_stays_up(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
    slow = socket.create_connection(("127.0.0.1", cluster.port))
    slow.sendall(b"GET /tasks HTTP/1.1\r\nHost: x\r\n")  # and never finishes the headers
    started = time.monotonic()
    assert _answers(cluster.url)

    def closed() -> bool:
        slow.settimeout(0.5)
        try:
            return slow.recv(1024) == b""
        except TimeoutError:
            return False
        except OSError:
            return True

    try:
        wait_for(closed, timeout=30, what="the server to drop the slow client")
    finally:
        slow.close()
    assert time.monotonic() - started < 25
    assert _answers(cluster.url)


def test_connections_beyond_the_bound_get_a_503_and_the_api_recovers(
    cluster: Cluster,
) -> None:
    from chronosync_scheduler.http import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT

    cluster.start("scheduler")
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the scheduler")
    held = []
    try:
        # From as many addresses as it takes: one address alone gets fewer (a 429).
        for i in range(MAX_CONNECTIONS):
            source = f"127.0.0.{2 + i // MAX_CONNECTIONS_PER_CLIENT}"
            held.append(socket.create_connection(("127.0.0.1", cluster.port), timeout=10,
                                                 source_address=(source, 0)))

        def refused() -> bytes | None:
            # The server answers a connection over the bound as soon as it accepts it.
            try:
                with socket.create_connection(("127.0.0.1", cluster.port),
                                              timeout=10) as extra:
                    answer = extra.recv(4096)
            except OSError:
                return None
            return answer if answer.startswith(b"HTTP/1.1 503") else None

        answer = wait_for(refused, timeout=30, what="a connection beyond the bound refused")
        assert b'"error"' in answer
    finally:
        for conn in held:
            conn.close()
    wait_for(lambda: _answers(cluster.url), timeout=30, what="the API to answer again")
