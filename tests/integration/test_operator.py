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

CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")
SAMPLE = re.compile(r'^([a-zA-Z_:][\w:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? '
                    r'(-?[\d.e+-]+|\+Inf|NaN)$')


def scrape(cluster: Cluster) -> dict[str, list[tuple[str, float]]]:
    """Parse the exposition strictly: every line a comment or a valid sample."""
    with urllib.request.urlopen(cluster.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: dict[str, list[tuple[str, float]]] = {}
    typed = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            typed.add(line.split()[2])
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        samples.setdefault(match[1], []).append((match[2] or "", float(match[3])))
    for name in samples:
        assert re.sub(r"_(bucket|sum|count)$", "", name) in typed or name in typed, name
    return samples


def total(samples: dict[str, list[tuple[str, float]]], name: str, **labels: str) -> float:
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(value for text, value in samples.get(name, [])
               if all(w in text for w in wanted))


def test_metrics_gather_every_node_s_figures_and_the_database_s(cluster: Cluster) -> None:
    cluster.start_default(coordinators=1, workers=2)
    ids = [cluster.http("POST", "/schedule", {"command": "true"})[1]["id"] for _ in range(6)]
    failing = cluster.http("POST", "/schedule", {"command": "exit 3"})[1]["id"]
    far = cluster.http("POST", "/schedule", {"command": "true",
                                             "scheduled_at": "2099-01-01T00:00:00Z"})[1]
    for task_id in [*ids, failing]:
        cluster.wait_task(task_id, ("succeeded", "failed"))

    def counted() -> dict | None:
        samples = scrape(cluster)
        done = total(samples, "chronosync_runs_total", outcome="succeeded")
        failed = total(samples, "chronosync_runs_total", outcome="exit")
        created = total(samples, "chronosync_http_requests_total", status="201")
        return samples if done >= 6 and failed >= 1 and created >= 8 else None

    samples = wait_for(counted, timeout=20, what="every node's next heartbeat")
    assert total(samples, "chronosync_task_lateness_seconds_count") >= 7
    assert total(samples, "chronosync_task_lateness_seconds_bucket", le="+Inf") >= 7
    assert total(samples, "chronosync_claim_batch_size_count", kind="coordinator") >= 1
    assert total(samples, "chronosync_tasks_dispatched_total") >= 7
    assert total(samples, "chronosync_queue_depth", state="later") == 1 and far
    assert total(samples, "chronosync_queue_depth", state="due") == 0
    assert total(samples, "chronosync_worker_slots", state="free") == 16
    assert total(samples, "chronosync_nodes", kind="worker", state="alive") == 2
    assert total(samples, "chronosync_http_requests_total", status="201") >= 8
    for kind in ("scheduler", "coordinator", "worker"):
        assert total(samples, "process_resident_memory_bytes", kind=kind) > 0


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
        code = watch.wait(timeout=10)
        if watch.stdout is not None:
            watch.stdout.close()
    assert code == 0
