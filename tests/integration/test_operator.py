"""What operators watch: /metrics gathered from every node, JSON logs naming tasks and
nodes, the OpenAPI document, and the CLI's logs and watch."""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from harness import Cluster, node_id, wait_for
from prometheus_client.parser import text_string_to_metric_families

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(cluster: Cluster) -> Samples:
    """Parse the exposition with Prometheus's own client parser (which refuses a duplicate
    label name), and check what a scrape would choke on or mislead with: a sample of no
    declared family, a family declared twice, a ``_total`` that is not a counter."""
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), "a family declared twice"
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.type != "unknown", f"samples without a TYPE: {family.samples[:2]}"
        for sample in family.samples:
            assert family.type == "counter" or not sample.name.endswith("_total"), \
                f"{sample.name} is typed {family.type}"
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for have, value in samples.get(name, [])
               if all(have.get(k) == v for k, v in labels.items()))


def series(samples: Samples, name: str, **labels: str) -> int:
    return sum(1 for have, _ in samples.get(name, [])
               if all(have.get(k) == v for k, v in labels.items()))


def test_metrics_gather_every_node_s_figures_and_the_database_s(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=2)
    ids = [cluster.http("POST", "/schedule", {"command": "true"})[1]["id"] for _ in range(6)]
    failing = cluster.http("POST", "/schedule", {"command": "exit 3"})[1]["id"]
    far = cluster.http("POST", "/schedule", {"command": "true",
                                             "scheduled_at": "2099-01-01T00:00:00Z"})[1]
    for task_id in [*ids, failing]:
        cluster.wait_task(task_id, ("succeeded", "failed"))

    # Every node's figures arrive with its heartbeat, each in its own time: wait for all
    # the counts these tasks make, and for every slot freed (a run is counted when its
    # command ends, its slot freed once its outcome is written: a heartbeat between the
    # two shows the count with the slot still taken).
    wanted = {("chronosync_runs_total", ("outcome", "succeeded")): 6,
              ("chronosync_runs_total", ("outcome", "exit")): 1,
              ("chronosync_http_requests_total", ("status", "201")): 8,
              ("chronosync_task_lateness_seconds_count", None): 7,
              ("chronosync_task_lateness_seconds_bucket", ("le", "+Inf")): 7,
              ("chronosync_claim_batch_size_count", ("kind", "coordinator")): 1,
              ("chronosync_run_duration_seconds_count", None): 7,
              ("chronosync_tasks_dispatched_total", None): 7}

    def counted() -> dict | None:
        samples = scrape(cluster)
        return samples if all(
            total(samples, name, **dict([label] if label else [])) >= least
            for (name, label), least in wanted.items()) and total(
                samples, "chronosync_worker_slots", state="free") >= 16 else None

    samples = wait_for(counted, timeout=30, what="every node's counts in /metrics")
    assert total(samples, "chronosync_queue_depth", state="later") == 1 and far
    assert total(samples, "chronosync_queue_depth", state="due") == 0
    assert total(samples, "chronosync_worker_slots", state="free") == 16
    assert {labels["node"] for labels, _ in samples["chronosync_worker_slots"]} == {
        node_id(cluster, node) for node in cluster.processes.nodes if node.kind == "worker"}
    assert total(samples, "chronosync_nodes", kind="worker", state="alive") == 2
    assert total(samples, "chronosync_http_requests_total", status="201") >= 8
    for kind in ("scheduler", "coordinator", "worker"):
        assert total(samples, "process_resident_memory_bytes", kind=kind) > 0


def test_metrics_stay_valid_and_complete_through_failures(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    """A scrape parses at every moment: before any failure (every counter at 0), and
    after a worker kill, a dispatch error, a retry, a skipped tick and a backdated task."""
    cluster.start("scheduler")
    cluster.start("coordinator")
    doomed = cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)

    def published(samples: Samples) -> bool:
        return all(series(samples, "process_cpu_seconds_total", kind=kind)
                   for kind in ("scheduler", "coordinator", "worker"))

    quiet = wait_for(lambda: (lambda s: s if published(s) else None)(scrape(cluster)),
                     timeout=20, what="every node's first metrics")
    for name, labels in (("chronosync_recoveries_total", {"reason": "worker_lost"}),
                         ("chronosync_recoveries_total", {"reason": "retried"}),
                         ("chronosync_recoveries_total", {"reason": "redispatched"}),
                         ("chronosync_dispatch_errors_total", {}),
                         ("chronosync_occurrences_skipped_total", {"policy": "forbid"}),
                         ("chronosync_occurrences_skipped_total", {"policy": "misfire"}),
                         ("chronosync_runs_total", {"outcome": "exit"}),
                         ("chronosync_fenced_writes_total", {})):
        assert series(quiet, name, **labels) == 1, f"{name}{labels} missing before any event"
        assert total(quiet, name, **labels) == 0

    # A worker dies while running a command; the next task is offered to it first.
    started = tmp_path / "started"
    _, lost = cluster.http("POST", "/schedule", {"command": f"touch {started}; sleep 60"})
    wait_for(started.exists, timeout=20, what="the doomed worker's command")
    doomed.signal(signal.SIGKILL)
    _, offered = cluster.http("POST", "/schedule", {"command": "true"})
    cluster.start("worker")
    # A retry, a backdated task, and a job whose second tick is skipped (forbid).
    marker = tmp_path / "failed-once"
    _, retried = cluster.http("POST", "/schedule", {
        "command": f"test -e {marker} || {{ touch {marker}; exit 1; }}",
        "delivery": "at_least_once", "max_attempts": 2})
    _, backdated = cluster.http("POST", "/schedule", {
        "command": "true", "scheduled_at": "2020-01-01T00:00:00Z"})
    _, job = cluster.http("POST", "/schedule", {
        "command": "sleep 3", "cron": "* * * * * *", "concurrency_policy": "forbid"})

    assert cluster.wait_task(lost["id"], ("failed",))["error"] == "worker_lost"
    for task in (offered, retried, backdated):
        cluster.wait_task(task["id"], ("succeeded",))

    def after_events() -> Samples | None:
        samples = scrape(cluster)
        job_labels = {"job_id": str(job["id"])}
        seen = (total(samples, "chronosync_recoveries_total", reason="worker_lost") >= 1
                and total(samples, "chronosync_dispatch_errors_total") >= 1
                and total(samples, "chronosync_runs_total", outcome="exit") >= 1
                and total(samples, "chronosync_occurrences_skipped_total",
                          policy="forbid") >= 1
                and total(samples, "chronosync_job_occurrences_skipped_total",
                          reason="forbid", **job_labels) >= 1
                and series(samples, "chronosync_job_last_run_timestamp_seconds",
                           **job_labels) == 1)
        return samples if seen else None

    samples = wait_for(after_events, timeout=30, what="every event in /metrics")
    cluster.http("DELETE", f"/jobs/{job['id']}")
    assert series(samples, "chronosync_job_last_run_timestamp_seconds") == 1, \
        "one series per job, none per task"
    assert total(samples, "chronosync_task_lateness_seconds_sum") < 60, \
        "a task submitted for 2020 is not years late"
    assert total(samples, "chronosync_run_duration_seconds_count") >= 3


def test_json_logs_name_the_node_and_the_task(cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator", CHRONOSYNC_LOG_FORMAT="json")
    worker = cluster.start("worker", CHRONOSYNC_LOG_FORMAT="json")
    cluster.wait_ready(coordinators=1, workers=1)
    worker_id = node_id(cluster, worker)
    _, body = cluster.http("POST", "/schedule", {"command": "true"})
    cluster.wait_task(body["id"], ("succeeded",))
    assert worker.log_path is not None

    def task_lines() -> list[dict] | None:
        lines = [json.loads(line) for line in worker.log_path.read_text().splitlines()]
        about = [line for line in lines if f"task {body['id']}:" in line["message"]]
        return lines if about else None

    lines = wait_for(task_lines, timeout=10, what="the worker's lines about the task")
    assert all(line["node"] == worker_id and line["level"] and line["time"]
               for line in lines)
    about = [line for line in lines if f"task {body['id']}:" in line["message"]]
    assert all(line.get("task_id") == body["id"] for line in about)


def test_the_openapi_document_is_served(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _up(cluster), timeout=30, what="the scheduler")
    status, doc = cluster.http("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert "/tasks/{id}/cancel" in doc["paths"]


def _up(cluster: Cluster) -> bool:
    try:
        return cluster.http("GET", "/healthz")[0] == 200
    except OSError:
        return False


def test_the_cli_shows_a_task_s_output_and_watches_the_list(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule", {"command": "printf 'line 1\\nline 2\\n'"})
    cluster.wait_task(body["id"], ("succeeded",))
    logs = subprocess.run([CHRONOSYNC, "--url", cluster.url, "logs", str(body["id"])],
                          capture_output=True, text=True, timeout=30, check=False)
    assert logs.returncode == 0 and logs.stdout == "line 1\nline 2\n"

    watch = subprocess.Popen([CHRONOSYNC, "--url", cluster.url, "tasks", "--watch",
                              "--interval", "0.2"], stdout=subprocess.PIPE, text=True)
    row = re.compile(rf"^{body['id']}\s+succeeded\s", re.MULTILINE)
    try:
        assert watch.stdout is not None
        seen, deadline = "", time.monotonic() + 20
        while not row.search(seen):
            assert time.monotonic() < deadline, f"no row for the task in: {seen[-500:]!r}"
            if select.select([watch.stdout], [], [], 1)[0]:
                line = watch.stdout.readline()
                assert line, "watch ended early"
                seen += line
        assert seen.count("(Ctrl-C to stop)") >= 1
    finally:
        watch.send_signal(signal.SIGINT)
        # Read on while it ends: with the pipe full (a slow reader), its last write and
        # its exit's flush would wait for us forever.
        try:
            watch.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.communicate()
            raise
    assert watch.returncode == 0


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHRONOSYNC, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_cli_follows_kubectl_s_habits(cluster: Cluster) -> None:
    cluster.start("scheduler")
    wait_for(lambda: _up(cluster), timeout=30, what="the scheduler")
    url = f"127.0.0.1:{cluster.port}"  # host:port, no scheme

    version = run_cli("--version")
    assert version.returncode == 0 and re.fullmatch(r"chronosync \S+\n", version.stdout)
    made = run_cli("--url", url, "schedule", "--at", "2099-01-01T00:00:00+05:30", "--",
                   "echo", "later")
    assert made.returncode == 0, made.stderr
    [line] = made.stdout.splitlines()
    task_id = int(re.fullmatch(r"task (\d+) scheduled for 2098-12-31T18:30:00Z", line)[1])

    after = json.loads(run_cli("--url", url, "tasks", "--json").stdout)
    before = json.loads(run_cli("--url", url, "-o", "json", "tasks").stdout)
    assert [t["id"] for t in after["tasks"]] == [t["id"] for t in before["tasks"]] == [task_id]
    assert json.loads(run_cli("--url", url, "task", str(task_id), "-o", "json").stdout)[
        "command"] == "echo later"
    wide = run_cli("--url", url, "tasks", "-o", "wide").stdout.splitlines()[0].split()
    assert {"ATTEMPT", "NEXT_ATTEMPT_AT", "CREATED_AT"} <= set(wide)

    waiting = run_cli("--url", url, "logs", str(task_id))
    assert (waiting.returncode, waiting.stdout) == (0, "")
    assert waiting.stderr == (f"task {task_id} is scheduled: no output yet "
                              "(due 2098-12-31T18:30:00Z)\n")
    missing = run_cli("--url", url, "logs", "999999")
    assert missing.returncode == 1 and "404" in missing.stderr

    job_made = run_cli("--url", url, "schedule", "--cron", "* * * * * *", "--", "true")
    [job_line] = job_made.stdout.splitlines()
    job_id = re.match(r"job (\d+) scheduled: Every second \(UTC\); next run ", job_line)[1]
    wait_for(lambda: http_recent(cluster, job_id), timeout=20, what="a tick of the job")
    shown = run_cli("--url", url, "job", job_id).stdout
    assert re.search(r"^recent:\nID +STATUS +SCHEDULED_AT +ERROR$", shown, re.MULTILINE), shown
    assert "{'" not in shown and "None" not in shown
    assert "next_runs" not in run_cli("--url", url, "pause", job_id).stdout

    for command in ("schedule", "tasks", "task", "cancel", "logs", "jobs", "job", "pause",
                    "resume", "delete", "nodes", "dev"):
        helped = run_cli(command, "--help")
        assert helped.returncode == 0 and "example:\n  chronosync " in helped.stdout, command


def http_recent(cluster: Cluster, job_id: str) -> bool:
    return bool(cluster.http("GET", f"/jobs/{job_id}")[1].get("recent"))
