"""GET /tasks by worker and by text in the command, against real workers on a real
database: each worker's filter gives the tasks it ran and no other's; the text is found
anywhere in the command, ignoring case, with LIKE's wildcards and escape matching
themselves; both page with the cursor; bad values are a 400 naming the parameter; and a
worker's tasks are read through their own index, not a walk of everyone's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from harness import Cluster, node_id, wait_for

from chronocore.queries import QUERIES

FAR_FUTURE = "2099-01-01T00:00:00Z"
CHRONOSYNC = str(Path(sys.executable).parent / "chronosync")


def _ids(cluster: Cluster, query: str) -> list[int]:
    status, body = cluster.http("GET", f"/tasks?{query}")
    assert status == 200, (query, status, body)
    return [t["id"] for t in body["tasks"]]


def _cli_ids(cluster: Cluster, *filters: str) -> list[int]:
    """The same list through `chronosync tasks`, as a script reads it."""
    done = subprocess.run([CHRONOSYNC, "--url", cluster.url, "--json", "tasks", *filters],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    return [t["id"] for t in json.loads(done.stdout)["tasks"]]


def _submit(cluster: Cluster, body: dict[str, Any]) -> int:
    status, answer = cluster.http("POST", "/schedule", body)
    assert status == 201, answer
    return answer["id"]


def _start_scheduler(cluster: Cluster) -> None:
    def ready() -> bool:
        try:
            return cluster.http("GET", "/readyz")[0] == 200
        except OSError:
            return False

    cluster.start("scheduler")
    wait_for(ready, timeout=30, what="the scheduler to be ready")


def test_tasks_filter_by_the_worker_that_ran_them(cluster: Cluster) -> None:
    cluster.start("scheduler")
    cluster.start("coordinator")
    east = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=east")
    west = cluster.start("worker", CHRONOSYNC_WORKER_LABELS="zone=west")
    cluster.wait_ready(coordinators=1, workers=2)
    on = {zone: [_submit(cluster, {"command": f"echo {zone} {n}",
                                   "target": {"labels": {"zone": zone}}}) for n in range(3)]
          for zone in ("east", "west")}
    for task_id in on["east"] + on["west"]:
        cluster.wait_task(task_id, ("succeeded",), timeout=30)
    waiting = _submit(cluster, {"command": "echo later", "scheduled_at": FAR_FUTURE})

    for zone, node in (("east", east), ("west", west)):
        worker = node_id(cluster, node)
        assert _ids(cluster, f"worker={quote(worker)}") == sorted(on[zone], reverse=True)
        # With another filter, and paged by the cursor: each of its tasks once.
        assert _ids(cluster, f"worker={quote(worker)}&status=succeeded&limit=2") == sorted(
            on[zone], reverse=True)[:2]
        assert _ids(cluster, f"worker={quote(worker)}&before={max(on[zone])}") == sorted(
            on[zone], reverse=True)[1:]
    assert waiting not in _ids(cluster, f"worker={quote(node_id(cluster, east))}")
    # The command line's --worker, with --status beside it.
    assert _cli_ids(cluster, "--worker", node_id(cluster, west), "--status", "succeeded") \
        == sorted(on["west"], reverse=True)
    assert _ids(cluster, "worker=worker-nowhere-1-abcd") == []

    # The list's own statement reads a worker's tasks by their index (the planner told
    # to avoid scans where it can: with a handful of rows it would rightly prefer one).
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.execute(
            "EXPLAIN " + QUERIES["list_tasks"],
            {"status": None, "job_id": None, "worker": "worker-x", "text": None,
             "before": None, "limit": 100, "output_chars": 4096}))
    assert "tasks_worker" in plan, plan


def test_tasks_filter_by_text_in_the_command_with_wildcards_matching_themselves(
    cluster: Cluster,
) -> None:
    _start_scheduler(cluster)
    commands = ["pg_dump -Fc app > /backups/app.dump", "PG_DUMPALL --globals-only",
                "pgxdump nothing", "echo 100% done", "echo 100 percent",
                r"printf 'a\\b'", "printf 'ab'", "rsync -a /srv/ backup:/srv/"]
    ids = {command: _submit(cluster, {"command": command, "scheduled_at": FAR_FUTURE})
           for command in commands}

    def found(text: str) -> list[str]:
        by_id = {v: k for k, v in ids.items()}
        return [by_id[i] for i in _ids(cluster, f"text={quote(text)}")]

    # Ignoring case; '_' is an underscore, not any one character.
    assert found("pg_dump") == ["PG_DUMPALL --globals-only",
                                "pg_dump -Fc app > /backups/app.dump"]
    assert found("100%") == ["echo 100% done"]  # '%' is a percent sign, not anything
    assert found("%") == ["echo 100% done"]
    assert found("\\") == [r"printf 'a\\b'"]  # the LIKE escape is itself
    assert found("a\\\\b") == [r"printf 'a\\b'"]
    assert found("BACKUP") == ["rsync -a /srv/ backup:/srv/",
                               "pg_dump -Fc app > /backups/app.dump"]
    assert found("no such command") == []
    # The command line's --text: the wildcard and the space reach the API as they are.
    assert _cli_ids(cluster, "--text", "100% done") == [ids["echo 100% done"]]
    # With the cursor and another filter.
    assert _ids(cluster, "text=pg&limit=1") == [ids["pgxdump nothing"]]
    assert _ids(cluster, f"text=pg&before={ids['pgxdump nothing']}&status=scheduled") == [
        ids["PG_DUMPALL --globals-only"], ids["pg_dump -Fc app > /backups/app.dump"]]


def test_bad_worker_and_text_filters_are_400_naming_the_parameter(cluster: Cluster) -> None:
    _start_scheduler(cluster)
    cases = [
        ("worker=", "worker"), ("worker=a%20b", "worker"), ("worker=w%00", "worker"),
        ("worker=%C3%A9", "worker"), ("worker=" + "w" * 256, "worker"),
        ("worker=a'b", "worker"),
        ("text=", "text"), ("text=" + "x" * 201, "text"), ("text=a%00b", "text"),
        ("text=a%0Ab", "text"), ("text=%7F", "text"),
    ]
    problems = []
    for query, field in cases:
        status, body = cluster.http("GET", f"/tasks?{query}")
        if status != 400 or not isinstance(body, dict) or body.get("field") != field \
                or not body.get("error"):
            problems.append(f"GET /tasks?{query}: {status} {body}")
    assert not problems, "\n".join(problems)
    # The longest allowed values are a search like any other.
    assert _ids(cluster, "text=" + "x" * 200) == []
    assert _ids(cluster, "worker=" + "w" * 255) == []
