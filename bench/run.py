"""`make bench`: throughput, lateness, scale and failover of a real local cluster, in one
run, printed as a table and written to bench/results/<date>.json.

Everything runs here: an ephemeral PostgreSQL, durable as an adopter runs it (fsync and
synchronous_commit on; --relaxed turns them off, as the tests do), 1 scheduler, 1
coordinator and 2 workers by default (--schedulers/--coordinators/--workers). Figures are
ratios to what this machine can do at all (spawning `true` from Python), measured in the
same run, since the machine is shared and noisy. Times come from the database clock.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from chronocore import failpoints
from chronocore import queries as core
from chronocore.db import open_pool
from chronocore.migrate import apply_migrations
from chronocore.queries import parse
from chronocore.repository import JobRepository
from chronosync_dev.devcluster import ProcessCluster
from chronosync_dev.pgcluster import FAST_TEST_SETTINGS, LocalCluster, free_port

# Every statement the bench runs, by name; the cluster's own come from core.QUERIES.
QUERIES = parse((Path(__file__).parent / "queries.sql").read_text(encoding="utf-8"))
BURST_TASKS = 5000
IDLE_TASKS = 200
IDLE_SPACING_S = 0.2
STEADY_RATES = (200, 500)
STEADY_SECONDS = 10
CLIENTS = 8
SUBMIT_SECONDS = 5
RSS_LIMIT_MB = 100
# Recurring jobs in the materialization measure, each due once in the window.
MATERIALIZE_JOBS = 20_000
# The fleet row: many workers, a few coordinators and schedulers, one PostgreSQL.
FLEET = {"workers": 100, "capacity": 4, "coordinators": 3, "schedulers": 2, "rate": 200,
         "seconds": 10, "killed": 10}
# The idle row: finished tasks in history (three in four of ten recurring jobs, half
# forbid, half replace), and how long the idle cluster is watched at each size.
IDLE_HISTORIES = {"10k": 10_000, "1m": 1_000_000}
IDLE_JOBS = 10
IDLE_WINDOW_S = 20.0
# After the history is written and analysed, before counting: the statistics of the
# statements that wrote it have been reported (backends report at most once a second).
IDLE_SETTLE_S = 3.0
# What the durable figures run on: PostgreSQL's defaults, with room for the bench's
# connections.
DURABLE_SETTINGS = {"max_connections": "1000", "shared_buffers": "128MB"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.results: dict[str, Any] = {}
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self.postgres = LocalCluster(datadir=workdir / "pgdata", settings=postgres_settings(args))
        self.postgres.start()
        self.dsn = self.postgres.dsn()
        apply_migrations(self.dsn)
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        env = {"CHRONOSYNC_HTTP_ADDR": self.url, "CHRONOSYNC_ALLOW_ROOT": "1",
               "CHRONOSYNC_WORKER_CAPACITY": str(args.capacity)}
        self.cluster = ProcessCluster(dsn=self.dsn, env=env, log_dir=workdir)

    # --- helpers ------------------------------------------------------------------------

    def sql(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run the statement ``name`` of bench/queries.sql; its rows, if it returns any."""
        # One connection for the whole run: a new one per poll would fork a backend
        # twenty times a second, CPU taken from the cluster being measured.
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row)
        return run_named(self._conn, name, params)

    def start_cluster(self) -> None:
        for _ in range(self.args.schedulers):
            self.cluster.start("scheduler")
        for _ in range(self.args.coordinators):
            self.cluster.start("coordinator")
        for _ in range(self.args.workers):
            self.cluster.start("worker")
        self.wait(lambda: self.sql("live_nodes", within_s=2)[0]["n"] >= self.args.schedulers
                  + self.args.coordinators + self.args.workers, 60, "the cluster")

    @staticmethod
    def wait(condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: timed out waiting for {what}")
            time.sleep(0.05)

    def unfinished(self) -> int:
        return self.sql("unfinished")[0]["n"]

    def insert_due(self, count: int, *, delay_s: float, spacing_s: float = 0.0,
                   command: str = "true") -> None:
        self.sql("insert_due", command=command, delay_s=delay_s, spacing_s=spacing_s,
                 count=count)

    def lateness(self, since_id: int) -> list[float]:
        rows = self.sql("lateness_since", since=since_id)
        return [r["l"] for r in rows]

    def last_id(self) -> int:
        return self.sql("last_task_id")[0]["id"]

    # --- the measures -----------------------------------------------------------------

    def ceiling(self) -> None:
        """How fast this machine spawns `true` from Python: one thread, and a pool."""
        def spawn() -> None:
            subprocess.run(["/bin/sh", "-c", "true"], check=True)

        n = 300
        t0 = time.perf_counter()
        for _ in range(n):
            spawn()
        single = n / (time.perf_counter() - t0)
        n = 2000
        threads = 2 * (os.cpu_count() or 1) * 2
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda _: spawn(), range(n)))
        pooled = n / (time.perf_counter() - t0)
        self.results["ceiling"] = {"single_thread_per_s": round(single, 1),
                                   "pool_per_s": round(pooled, 1), "pool_threads": threads}

    def burst(self) -> None:
        rss: dict[str, float] = {}
        stop = threading.Event()
        sampler = threading.Thread(target=self._sample_rss, args=(rss, stop), daemon=True)
        since = self.last_id()
        due = self.sql("instant_in", seconds=2)[0]["at"]
        self.sql("insert_burst", at=due, count=BURST_TASKS)
        profilers = self._profile() if self.args.profile else []
        cpu_before = self._cpu_by_role()
        sampler.start()
        self.wait(lambda: self.unfinished() == 0, 300, "the burst to finish")
        stop.set()
        sampler.join()
        cpu_after = self._cpu_by_role()
        for profiler in profilers:
            profiler.wait()
        row = self.sql("burst_span", at=due, since=since)[0]
        batches = self.sql("mean_batches", since=since)[0]
        per_s = BURST_TASKS / row["span"]
        pool = self.results["ceiling"]["pool_per_s"]
        self.results["burst"] = {
            "tasks": BURST_TASKS, "succeeded": row["ok"], "seconds": round(row["span"], 2),
            "tasks_per_s": round(per_s, 1), "ratio_to_pool_ceiling": round(per_s / pool, 2),
            "max_rss_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
            "mean_batch": {k: round(v, 1) for k, v in batches.items()},
            # Where the CPU went during the burst (seconds, all cores): the breakdown
            # that says what to make faster.
            "cpu_s": {role: round(cpu_after.get(role, 0.0) - cpu_before.get(role, 0.0), 2)
                      for role in sorted(set(cpu_after) | set(cpu_before))},
        }

    def _cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far: each kind of node, PostgreSQL, the commands, the machine."""
        tick = os.sysconf("SC_CLK_TCK")
        roles: dict[str, float] = {}
        node_pids = {node.pid: node.kind for node in self.cluster.nodes}
        postmaster = int((self.postgres.datadir / "postmaster.pid").read_text().split()[0])
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            # utime, stime, and the children's once reaped (the commands, by the workers;
            # ended backends, by the postmaster).
            used = sum(int(x) for x in fields[11:15]) / tick
            pid, parent = int(entry.name), int(fields[1])
            if pid in node_pids:
                role = node_pids[pid]
            elif postmaster in (pid, parent) and b"postgres" in cmdline[:64]:
                role = "postgres"
            else:
                continue
            roles[role] = roles.get(role, 0.0) + used
        with open("/proc/stat") as stat:
            total = [int(x) for x in stat.readline().split()[1:]]
        roles["machine_busy"] = (sum(total) - total[3] - total[4]) / tick
        roles["machine_total"] = sum(total) / tick
        return roles

    def _profile(self) -> list[subprocess.Popen[bytes]]:
        """py-spy on every node through the burst: collapsed stacks in the results."""
        out = Path(self.args.out) / "profiles"
        out.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        return [subprocess.Popen(
            [str(py_spy), "record", "--pid", str(node.pid), "--duration", "10",
             "--format", "raw", "--threads", "-o",
             str(out / f"{node.name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for node in self.cluster.nodes]

    def _sample_rss(self, rss: dict[str, float], stop: threading.Event) -> None:
        while not stop.wait(0.1):
            for node in self.cluster.nodes:
                try:
                    status = Path(f"/proc/{node.pid}/status").read_text()
                except FileNotFoundError:
                    continue
                kb = next(int(line.split()[1]) for line in status.splitlines()
                          if line.startswith("VmRSS:"))
                rss[node.name] = max(rss.get(node.name, 0.0), kb / 1024)

    def lateness_runs(self) -> None:
        out = {}
        since = self.last_id()
        self.insert_due(IDLE_TASKS, delay_s=1, spacing_s=IDLE_SPACING_S)
        self.wait(lambda: self.unfinished() == 0, 120, "the idle run")
        out["idle"] = self._summary(self.lateness(since))
        for rate in STEADY_RATES:
            since = self.last_id()
            self.insert_due(rate * STEADY_SECONDS, delay_s=1, spacing_s=1.0 / rate)
            self.wait(lambda: self.unfinished() == 0, 300, f"the {rate}/s run")
            out[f"{rate}_per_s"] = self._summary(self.lateness(since))
        self.results["lateness_ms"] = out

    @staticmethod
    def _summary(values: list[float]) -> dict[str, float]:
        ms = [v * 1000 for v in values]
        return {"n": len(ms), "p50": round(percentile(ms, 50), 1),
                "p95": round(percentile(ms, 95), 1), "p99": round(percentile(ms, 99), 1),
                "max": round(max(ms), 1)}

    def claim_cost(self, history: int) -> float:
        """Median time of one claim (limit 50, 100 due) with ``history`` finished tasks."""
        have = self.sql("finished_count")[0]["n"]
        if history > have:
            self.sql("insert_history", count=history - have)
            self.sql("analyze_tasks")
        since = self.last_id()
        self.insert_due(100, delay_s=3600)
        times = []
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            run_named(conn, "make_due_since", {"since": since})
            for _ in range(200):
                t0 = time.perf_counter()
                with conn.transaction(force_rollback=True):
                    conn.execute(core.QUERIES["claim_due"],
                                 {"coordinator_id": "bench", "limit": 50}).fetchall()
                times.append(time.perf_counter() - t0)
            run_named(conn, "delete_since", {"since": since})
        return statistics.median(times) * 1000

    def scale(self) -> None:
        # The cluster's coordinator would claim our probe tasks: pause it meanwhile.
        coordinators = [n for n in self.cluster.nodes if n.kind == "coordinator"]
        for node in coordinators:
            node.signal(signal.SIGSTOP)
        try:
            small = self.claim_cost(10_000)
            large = self.claim_cost(1_000_000)
            pruning = self._claim_while_pruning()
        finally:
            for node in coordinators:
                node.signal(signal.SIGCONT)
        self.results["claim_ms"] = {"history_10k": round(small, 3),
                                    "history_1m": round(large, 3),
                                    "ratio_1m_to_10k": round(large / small, 2),
                                    "history_1m_while_pruning": round(pruning, 3)}
        self.results["submit_per_s"] = round(self._submit_rate(), 1)

    def _claim_while_pruning(self) -> float:
        """The claim again while another session prunes old history in batches."""
        self.sql("age_half_the_history")
        stop = threading.Event()

        def prune() -> None:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not stop.is_set():
                    conn.execute(core.QUERIES["prune_finished"],
                                 {"retention_s": 30 * 86400, "limit": 500})

        pruner = threading.Thread(target=prune, daemon=True)
        pruner.start()
        try:
            return self.claim_cost(0)
        finally:
            stop.set()
            pruner.join()

    def _submit_rate(self) -> float:
        body = json.dumps({"command": "true", "scheduled_at": "2099-01-01T00:00:00Z"})
        deadline = time.monotonic() + SUBMIT_SECONDS
        counts = [0] * CLIENTS

        def client(i: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            while time.monotonic() < deadline:
                conn.request("POST", "/schedule", body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status == 201:
                    counts[i] += 1
            conn.close()

        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))
        rate = sum(counts) / (time.monotonic() - t0)
        self.sql("delete_submitted_probes")
        return rate

    def materialize_rate(self) -> None:
        """Occurrences one scheduler makes per second: MATERIALIZE_JOBS jobs every
        minute, each due once in the window, made by the scheduler's own step (the
        cluster's schedulers are paused meanwhile, so only this one works)."""
        schedulers = [n for n in self.cluster.nodes if n.kind == "scheduler"]
        for node in schedulers:
            node.signal(signal.SIGSTOP)
        pool = open_pool(self.dsn, size=1, name="bench-materializer")
        try:
            self.sql("insert_minutely_jobs", count=MATERIALIZE_JOBS)
            jobs = JobRepository(pool)
            made, t0 = 0, time.perf_counter()
            while step := jobs.materialize(horizon_s=150):
                made += sum(len(m.tasks) for m in step)
            elapsed = time.perf_counter() - t0
        finally:
            pool.close()
            self.sql("delete_job_tasks")
            self.sql("delete_jobs")
            for node in schedulers:
                node.signal(signal.SIGCONT)
        self.results["materialize"] = {"jobs": MATERIALIZE_JOBS, "occurrences": made,
                                       "per_s": round(made / elapsed)}

    def fleet(self) -> None:
        """100 workers (capacity 4), 3 coordinators, 2 schedulers against one PostgreSQL:
        connections, heartbeat writes, claim-to-start under a steady rate, how evenly the
        work spreads, and recovery when 10 workers die at once."""
        for node in self.cluster.nodes:
            node.signal(signal.SIGTERM)
        self.cluster.stop()
        self.sql("delete_nodes")
        fleet = ProcessCluster(dsn=self.dsn, log_dir=self.workdir, env={
            "CHRONOSYNC_ALLOW_ROOT": "1", "CHRONOSYNC_WORKER_CAPACITY": str(FLEET["capacity"])})
        self.cluster = fleet  # close() stops it
        for _ in range(FLEET["schedulers"]):
            fleet.start("scheduler", env={"CHRONOSYNC_HTTP_ADDR": f"127.0.0.1:{free_port()}"})
        for kind in ("coordinators", "workers"):
            for _ in range(FLEET[kind]):
                fleet.start(kind.removesuffix("s"))
        total = FLEET["workers"] + FLEET["coordinators"] + FLEET["schedulers"]
        self.wait(lambda: self.sql("live_nodes", within_s=5)[0]["n"] >= total, 300,
                  "the fleet")
        out: dict[str, Any] = {k: v for k, v in FLEET.items()}
        beats_before = self._node_updates()
        t0 = time.monotonic()
        since = self.last_id()
        self.insert_due(FLEET["rate"] * FLEET["seconds"], delay_s=1,
                        spacing_s=1.0 / FLEET["rate"])
        connections = 0
        while self.unfinished():
            connections = max(connections, self._connections())
            if time.monotonic() - t0 > 300:
                raise SystemExit("bench: the fleet's steady run did not finish")
            time.sleep(0.5)
        out["heartbeat_writes_per_s"] = round(
            (self._node_updates() - beats_before) / (time.monotonic() - t0), 1)
        out["postgres_connections"] = connections
        rows = self.sql("claim_to_start_since", since=since)
        out["claim_to_start_ms"] = self._summary([r["c"] for r in rows])
        per_worker = collections.Counter(r["worker_id"] for r in rows)
        out["tasks_per_worker"] = {"min": min(per_worker.values()),
                                   "max": max(per_worker.values()),
                                   "workers_used": len(per_worker)}
        out["kill_10_workers"] = self._kill_workers(fleet, FLEET["killed"])
        self.results["fleet"] = out

    def idle(self) -> None:
        """Tuples an idle cluster reads per second (``tup_returned + tup_fetched`` of its
        database), with 10 k and 1 M finished tasks in history: the work every heartbeat,
        sweep and concurrency step does when there is nothing to do. Runs its own nodes
        on a database of its own, so nothing else in the bench is counted."""
        self.sql("drop_idle_database")
        self.sql("create_idle_database")
        dsn = self.postgres.dsn("chronosync_idle")
        apply_migrations(dsn)
        log_dir = self.workdir / "idle"
        log_dir.mkdir(exist_ok=True)
        cluster = ProcessCluster(dsn=dsn, log_dir=log_dir, env={
            "CHRONOSYNC_ALLOW_ROOT": "1", "CHRONOSYNC_HTTP_ADDR": f"127.0.0.1:{free_port()}"})
        figures: dict[str, int] = {}
        try:
            with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
                def sql(name: str, **params: Any) -> list[dict[str, Any]]:
                    return run_named(conn, name, params)

                def tuples_read() -> int:
                    return sql("tuples_read")[0]["n"]

                for kind in ("scheduler", "coordinator", "worker", "worker"):
                    cluster.start(kind)
                self.wait(lambda: sql("live_nodes", within_s=2)[0]["n"] >= 4, 60,
                          "the idle cluster")
                have = 0
                for label, history in IDLE_HISTORIES.items():
                    sql("insert_idle_history", first=have + 1, last=history, jobs=IDLE_JOBS)
                    have = history
                    sql("analyze_tasks")
                    time.sleep(IDLE_SETTLE_S)
                    before, t0 = tuples_read(), time.monotonic()
                    time.sleep(IDLE_WINDOW_S)
                    figures[f"history_{label}"] = round(
                        (tuples_read() - before) / (time.monotonic() - t0))
        finally:
            cluster.stop()
        self.results["idle_tuples_read_per_s"] = figures

    def _node_updates(self) -> int:
        self.sql("flush_statistics")
        return self.sql("node_updates")[0]["n"]

    def _connections(self) -> int:
        return self.sql("client_connections")[0]["n"]

    def _kill_workers(self, fleet: ProcessCluster, count: int) -> dict[str, Any]:
        """Kill ``count`` busy workers at once: time until every task they ran is
        recovered; every at_most_once one failed once, every at_least_once succeeded."""
        since = self.last_id()
        # The first attempt runs long; a retry ends at once.
        self.sql("insert_long_first_attempts", per_delivery=FLEET["workers"])
        self.wait(lambda: self.sql("unstarted_since", since=since)[0]["n"] == 0, 120,
                  "every long task to start")
        busy = [r["pid"] for r in self.sql("busiest_workers", since=since, count=count)]
        victims = {r["id"] for r in self.sql("tasks_on_pids", since=since, pids=busy)}
        killed_at = self.sql("database_now")[0]["t"]
        for node in fleet.nodes:
            if node.pid in busy:
                node.signal(signal.SIGKILL)
        ids = list(victims)
        self.wait(lambda: self.sql("lost_among", ids=ids)[0]["n"] == len(victims), 120,
                  "the killed workers' tasks to be recovered")
        recovered = self.sql("last_lost_among", ids=ids)[0]["t"]
        self.wait(lambda: self.sql("unended_among", ids=ids)[0]["n"] == 0, 120,
                  "the retries to end")
        ends = self.sql("ends_by_delivery", ids=ids)
        self.sql("cancel_unended_since", since=since)
        by = {r["delivery"]: r for r in ends}
        return {"tasks_on_them": len(victims),
                "recovery_s": round((recovered - killed_at).total_seconds(), 2),
                "at_most_once_failed_once": (by.get("at_most_once", {}).get("lost")
                                             == by.get("at_most_once", {}).get("n")),
                "at_least_once_succeeded": (by.get("at_least_once", {}).get("ok")
                                            == by.get("at_least_once", {}).get("n"))}

    def failover(self) -> None:
        out = {}
        # A worker running tasks dies: how long until its tasks are recovered.
        victim = next(n for n in self.cluster.nodes if n.kind == "worker")
        since = self.last_id()
        self.sql("insert_sleepers", count=8)
        self.wait(lambda: self.sql("started_on_pid", since=since, pid=victim.pid)[0]["n"] > 0,
                  30, "tasks on the victim worker")
        killed_at = self.sql("database_now")[0]["t"]
        victim.signal(signal.SIGKILL)
        self.wait(lambda: self.sql("lost_since", since=since)[0]["n"] > 0, 60, "the recovery")
        recovered = self.sql("last_lost_since", since=since)[0]["t"]
        out["worker_kill_to_recovery_s"] = round((recovered - killed_at).total_seconds(), 2)
        self.sql("cancel_since", since=since)
        self.cluster.start("worker")
        # A coordinator holding claims dies: how long until they are dispatched again.
        holder = self.cluster.start("coordinator", env={failpoints.AFTER_CLAIM: "120"})
        for node in self.cluster.nodes:
            if node.kind == "coordinator" and node is not holder:
                node.signal(signal.SIGSTOP)
        since = self.last_id()
        self.sql("insert_now", count=8)
        self.wait(lambda: self.sql("picked_since", since=since)[0]["n"] == 8, 60, "the claims")
        for node in self.cluster.nodes:
            if node.kind == "coordinator" and node is not holder:
                node.signal(signal.SIGCONT)
        killed_at = self.sql("database_now")[0]["t"]
        holder.signal(signal.SIGKILL)
        self.wait(lambda: self.sql("completed_since", since=since)[0]["n"] == 8, 60,
                  "the redispatch")
        started = self.sql("last_start_since", since=since)[0]["t"]
        out["coordinator_kill_to_dispatch_s"] = round((started - killed_at).total_seconds(), 2)
        self.results["failover"] = out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.cluster.stop()
        self.postgres.stop()


def run_named(conn: psycopg.Connection[Any], name: str,
              params: dict[str, Any]) -> list[dict[str, Any]]:
    """The statement ``name`` of bench/queries.sql on ``conn``: its rows, if any. Always
    with a dict, so that ``%%`` in the file is a ``%`` whatever the statement's params."""
    cur = conn.execute(QUERIES[name], params)
    return cur.fetchall() if cur.description else []


def postgres_settings(args: argparse.Namespace) -> dict[str, str]:
    return FAST_TEST_SETTINGS if args.relaxed else DURABLE_SETTINGS


def machine() -> dict[str, Any]:
    import grpc
    import psycopg_pool

    return {
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "psycopg": psycopg.__version__,
        "psycopg_pool": psycopg_pool.__version__, "grpcio": grpc.__version__,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
    }


def table(results: dict[str, Any]) -> str:
    c, b, lat, claim, fo = (results["ceiling"], results["burst"], results["lateness_ms"],
                            results["claim_ms"], results["failover"])
    rows = [
        ("spawn ceiling, 1 thread", f"{c['single_thread_per_s']:.0f} /s", ""),
        ("spawn ceiling, pool", f"{c['pool_per_s']:.0f} /s", ""),
        (f"burst of {b['tasks']} `true`", f"{b['tasks_per_s']:.0f} tasks/s",
         f"{b['ratio_to_pool_ceiling']:.0%} of the pool ceiling (target >= 50%)"),
        *[(f"lateness {name.replace('_per_s', '/s')}",
           f"p50 {v['p50']} ms, p95 {v['p95']} ms, p99 {v['p99']} ms, max {v['max']} ms",
           {"idle": "target p99 <= 10 ms", "200_per_s": "target p99 <= 50 ms"}.get(name, ""))
          for name, v in lat.items()],
        ("occurrences made, 1 scheduler",
         f"{results['materialize']['per_s']} /s",
         f"{results['materialize']['jobs']} jobs `* * * * *` (target >= 10000/s)"),
        ("claim, 10k finished", f"{claim['history_10k']} ms", ""),
        ("claim, 1M finished", f"{claim['history_1m']} ms",
         f"{claim['ratio_1m_to_10k']}x the 10k claim (target <= 1.2x)"),
        ("claim, 1M while pruning", f"{claim['history_1m_while_pruning']} ms", ""),
        (f"POST /schedule, {CLIENTS} clients", f"{results['submit_per_s']:.0f} req/s", ""),
        ("worker SIGKILL -> recovery", f"{fo['worker_kill_to_recovery_s']} s",
         "target ~6 s (TTL + one sweep)"),
        ("coordinator SIGKILL -> dispatch", f"{fo['coordinator_kill_to_dispatch_s']} s", ""),
        *idle_rows(results.get("idle_tuples_read_per_s")),
        *fleet_rows(results.get("fleet")),
        ("tasks per statement in the burst", ", ".join(
            f"{k} {v:.0f}" for k, v in b["mean_batch"].items()), ""),
        ("CPU during the burst", ", ".join(
            f"{k} {v:.1f} s" for k, v in b["cpu_s"].items() if not k.startswith("machine"))
         + f" of {b['cpu_s'].get('machine_busy', 0):.1f} s busy", ""),
        ("max RSS during the burst", ", ".join(f"{k} {v:.0f} MB"
                                               for k, v in b["max_rss_mb"].items()),
         f"target < {RSS_LIMIT_MB} MB each"),
    ]
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    return "\n".join(f"{a.ljust(width)}  {v.ljust(value_width)}  {note}".rstrip()
                     for a, v, note in rows)


def idle_rows(idle: dict[str, int] | None) -> list[tuple[str, str, str]]:
    if idle is None:
        return []
    return [(f"idle cluster, {label.removeprefix('history_').upper()} finished",
             f"{n:,} tuples read/s", "1 scheduler, 1 coordinator, 2 workers")
            for label, n in idle.items()]


def fleet_rows(fleet: dict[str, Any] | None) -> list[tuple[str, str, str]]:
    if fleet is None:
        return []
    c, k, spread = fleet["claim_to_start_ms"], fleet["kill_10_workers"], fleet[
        "tasks_per_worker"]
    name = (f"fleet: {fleet['workers']} workers x {fleet['capacity']}, "
            f"{fleet['coordinators']} coord., {fleet['schedulers']} sched.")
    return [
        (name, f"{fleet['postgres_connections']} PostgreSQL connections",
         f"{fleet['heartbeat_writes_per_s']} heartbeat writes/s"),
        (f"fleet: claim to start at {fleet['rate']}/s",
         f"p50 {c['p50']} ms, p99 {c['p99']} ms",
         f"{spread['workers_used']} workers used, {spread['min']}-{spread['max']} "
         "tasks each"),
        (f"fleet: {fleet['killed']} workers SIGKILLed", f"{k['recovery_s']} s to recover",
         f"{k['tasks_on_them']} tasks; at_most_once failed once: "
         f"{k['at_most_once_failed_once']}, at_least_once succeeded: "
         f"{k['at_least_once_succeeded']}"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedulers", type=int, default=1)
    parser.add_argument("--coordinators", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--capacity", type=int, default=64 * (os.cpu_count() or 1),
                        help="commands per worker")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--profile", action="store_true",
                        help="py-spy every node during the burst (pip install py-spy)")
    parser.add_argument("--only-burst", action="store_true", help="skip the other measures")
    parser.add_argument("--only-materialize", action="store_true",
                        help="only the recurring jobs' materialization")
    parser.add_argument("--only-fleet", action="store_true",
                        help="only the fleet row (not yet in the full run: see bench/README.md)")
    parser.add_argument("--only-idle", action="store_true",
                        help="only the idle cluster's reads at 10k and 1M history")
    parser.add_argument("--relaxed", action="store_true",
                        help="PostgreSQL without fsync and synchronous_commit")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chronosync-bench-"))
    workdir.chmod(0o755)
    bench = Bench(args, workdir)
    try:
        if args.only_materialize:
            bench.start_cluster()
            bench.materialize_rate()
        elif args.only_fleet:
            bench.fleet()
        elif args.only_idle:
            bench.idle()
        else:
            bench.ceiling()
            bench.start_cluster()
            bench.burst()
        if not (args.only_burst or args.only_materialize or args.only_fleet
                or args.only_idle):
            bench.materialize_rate()
            bench.lateness_runs()
            bench.scale()
            bench.failover()
            bench.idle()
    except BaseException:
        bench.close()
        print(f"bench: the nodes' logs are kept in {workdir}", file=sys.stderr)
        raise
    bench.close()
    shutil.rmtree(workdir, ignore_errors=True)
    if args.only_burst or args.only_materialize or args.only_fleet or args.only_idle:
        print(json.dumps(bench.results, indent=2))
        return 0
    now = datetime.now(UTC)
    document = {"date": now.isoformat(timespec="seconds"), "machine": machine(),
                # What shaped the figures; not where they were written.
                "settings": {**{k: v for k, v in vars(args).items() if k != "out"},
                             "postgres": postgres_settings(args)},
                "results": bench.results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{now.date().isoformat()}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(table(bench.results))
    print(f"\nwritten to {path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
