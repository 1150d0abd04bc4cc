"""A network partition: a worker on its own "host" (a network namespace joined to this
one by a veth pair) is cut off from PostgreSQL and the coordinators while it runs tasks.

Its tasks are recovered after the TTL (at_most_once: failed as worker_lost; at_least_once:
retried on the other worker, and succeeded), its commands killed by the worker itself
before that (it fences itself); when the link comes back, the cut-off worker's late
writes are fenced off, the records still show the recovery's outcome, and
no at_most_once command has started twice (the marker files are on the shared
filesystem: namespaces only split the network).

Everything stays on this machine: a /30 from 198.18.0.0/15 (the range reserved for
network tests) joins the root namespace and ours; while the link is down a lower-priority
blackhole route for that /30 keeps packets for it from following the default route out.
PostgreSQL is this test's own cluster, listening on 127.0.0.1 and on the root-side veth
address. Skips where network namespaces cannot be made (not root, no ``ip``, no netns).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from harness import (
    FAST_TIMINGS,
    Cluster,
    log_of,
    node_id,
    own_postgres,
    running_cluster,
    wait_for,
)

from chronocore import db
from chronocore.tls import make_certs
from chronosync_dev.pgcluster import LocalCluster

pytestmark = pytest.mark.slow

TTL = timedelta(seconds=float(FAST_TIMINGS["CHRONOSYNC_NODE_TTL_S"]))
# Recovery after the cut: the TTL plus a sweep or two; generous for a shared 2-core machine
# (a coordinator may first spend a 5 s RPC deadline offering work to the cut-off worker).
RECOVERY_BOUND = timedelta(seconds=10)
FAST_RETRY = {"CHRONOSYNC_RETRY_BACKOFF_S": "0.2"}
# The cut-off worker has far more free slots than the other one, so the coordinators
# (least loaded first) offer it the tasks.
NS_CAPACITY, ROOT_CAPACITY = "16", "4"
AT_MOST_ONCE_TASKS, AT_LEAST_ONCE_TASKS = 3, 2
COMMAND_S = 3
# A blackhole route's metric: above the connected route's 0, so only used while it is gone.
BLACKHOLE_METRIC = "4242"
TEST_RANGE = ipaddress.ip_network("198.18.0.0/15")

T = TypeVar("T")


def _ip(*args: str, netns: str | None = None, check: bool = True,
        ) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({res.returncode}): "
                           f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def _subnet_in_use(subnet: ipaddress.IPv4Network) -> bool:
    """Whether any address or route of this machine's root namespace overlaps ``subnet``."""
    out = _ip("-4", "route", "show", "table", "all").stdout
    out += _ip("-4", "-o", "addr", "show").stdout
    for token in out.split():
        try:
            net = ipaddress.ip_network(token, strict=False)
        except ValueError:
            continue
        if net.version == 4 and net.prefixlen > 0 and net.overlaps(subnet):
            return True
    return False


def _pick_subnet() -> ipaddress.IPv4Network:
    for _ in range(20):
        index = random.randrange(TEST_RANGE.num_addresses // 4)
        subnet = ipaddress.ip_network(f"{TEST_RANGE.network_address + 4 * index}/30")
        if not _subnet_in_use(subnet):
            return subnet
    pytest.fail(f"no free /30 found in {TEST_RANGE}")


@dataclass
class Link:
    """Our namespace, the veth pair joining it to the root namespace, and their /30."""

    netns: str
    root_if: str
    ns_if: str
    subnet: str
    root_addr: str
    ns_addr: str

    def cut(self) -> None:
        _ip("link", "set", self.root_if, "down")

    def heal(self) -> None:
        _ip("link", "set", self.root_if, "up")

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns]


@pytest.fixture
def link() -> Iterator[Link]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (ip netns add); this test runs as "
                    f"uid {os.geteuid()}")
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to make a network namespace")
    tag = uuid.uuid4().hex[:8]
    subnet = _pick_subnet()
    hosts = list(subnet.hosts())
    made = Link(netns=f"chronosync-{tag}", root_if=f"csr{tag}", ns_if=f"csn{tag}",
                subnet=str(subnet), root_addr=str(hosts[0]), ns_addr=str(hosts[1]))
    added = _ip("netns", "add", made.netns, check=False)
    if added.returncode != 0:
        pytest.skip(f"cannot make a network namespace here (`ip netns add {made.netns}`: "
                    f"{added.stderr.strip() or added.returncode})")
    try:
        try:
            _ip("link", "add", made.root_if, "type", "veth", "peer", "name", made.ns_if,
                "netns", made.netns)
        except RuntimeError as exc:
            pytest.skip(f"network namespaces work but a veth pair cannot be made: {exc}")
        _ip("addr", "add", f"{made.root_addr}/30", "dev", made.root_if)
        _ip("link", "set", made.root_if, "up")
        _ip("route", "add", "blackhole", made.subnet, "metric", BLACKHOLE_METRIC)
        _ip("addr", "add", f"{made.ns_addr}/30", "dev", made.ns_if, netns=made.netns)
        _ip("link", "set", made.ns_if, "up", netns=made.netns)
        _ip("link", "set", "lo", "up", netns=made.netns)
        print(f"partition link: netns {made.netns}, {made.root_if} {made.root_addr} <-> "
              f"{made.ns_if} {made.ns_addr} ({made.subnet})")
        yield made
    finally:
        # Deleting the namespace deletes the veth pair (once no process is left in it).
        for args in (("netns", "del", made.netns), ("link", "del", made.root_if),
                     ("route", "del", "blackhole", made.subnet, "metric", BLACKHOLE_METRIC)):
            _ip(*args, check=False)


@pytest.fixture
def link_pg(link: Link) -> Iterator[LocalCluster]:
    """PostgreSQL on 127.0.0.1 and the root-side veth address, open to the namespace's
    address (with the password), migrated; stopped at the end."""
    hba_dir = Path(tempfile.mkdtemp(prefix="chronosync-partition-hba-"))
    hba_dir.chmod(0o755)  # under root the server runs as an unprivileged user
    # initdb's pg_hba.conf admits loopback only; the worker comes from its namespace.
    hba = hba_dir / "pg_hba.conf"
    hba.write_text("host all all 127.0.0.1/32 scram-sha-256\n"
                   f"host all all {link.ns_addr}/32 scram-sha-256\n")
    hba.chmod(0o644)
    try:
        with own_postgres("chronosync-partition-", {
                "listen_addresses": f"127.0.0.1,{link.root_addr}",
                "hba_file": str(hba)}) as server:
            yield server
    finally:
        shutil.rmtree(hba_dir, ignore_errors=True)


def ns_dsn(server: LocalCluster, link: Link) -> str:
    return (f"host={link.root_addr} port={server.port} user=postgres "
            f"password={server.password} dbname=postgres")


def reachable_from_namespace(server: LocalCluster, link: Link) -> bool:
    """A connection from inside the namespace to PostgreSQL's veth address works."""
    probe = (f"import psycopg; psycopg.connect({ns_dsn(server, link)!r}, "
             "connect_timeout=5).close()")
    res = subprocess.run([*link.exec_prefix(), sys.executable, "-c", probe],
                         capture_output=True, text=True, timeout=30, check=False)
    if res.returncode != 0:
        print(f"namespace -> PostgreSQL not yet: {res.stderr.strip()[-300:]}")
    return res.returncode == 0


@pytest.fixture
def partition_cluster(link_pg: LocalCluster, link: Link,
                      tmp_path: Path) -> Iterator[Cluster]:
    """Nodes on the test's own PostgreSQL; the link is healed and the nodes stopped
    before PostgreSQL is."""
    with running_cluster(link_pg.dsn(), tmp_path) as running:
        try:
            yield running
        finally:
            # A failed test may leave the link cut: heal it before the nodes stop.
            _ip("link", "set", link.root_if, "up", check=False)


def db_now(cluster: Cluster) -> datetime:
    return cluster.query("SELECT now() AS now")[0]["now"]


def records(cluster: Cluster, ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each task's row and its attempts, as PostgreSQL holds them."""
    tasks = {r["id"]: r for r in cluster.query(
        "SELECT id, delivery, attempt, worker_id, claim_token, started_at, completed_at,"
        " failed_at, error, exit_code, output FROM tasks WHERE id = ANY(%s)", (ids,))}
    for row in tasks.values():
        row["attempts"] = []
    for a in cluster.query(
            "SELECT task_id, attempt, worker_id, started_at, finished_at, exit_code, error"
            " FROM task_attempts WHERE task_id = ANY(%s) ORDER BY task_id, attempt", (ids,)):
        tasks[a.pop("task_id")]["attempts"].append(a)
    return tasks


def read_pairs(path: Path) -> list[tuple[int, int]]:
    """``task_id attempt`` lines written by the commands."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [(int(t), int(a)) for t, a in (line.split() for line in text.splitlines())]


def wait_or_explain(condition: Callable[[], T], *, timeout: float, what: str,
                    explain: Callable[[], str], interval: float = 0.05) -> T:
    """``wait_for``, failing with ``explain()`` (the state that matters) on a timeout."""
    try:
        return wait_for(condition, timeout=timeout, what=what, interval=interval)
    except pytest.fail.Exception:
        pytest.fail(f"timed out after {timeout}s waiting for {what}; {explain()}")


def submit(cluster: Cluster, command: str, **fields: Any) -> int:
    status, body = cluster.http("POST", "/schedule", {"command": command, **fields})
    assert status == 201, body
    return body["id"]


def test_a_cut_off_worker_s_tasks_are_recovered_and_its_late_writes_fenced_off(
    link_pg: LocalCluster, link: Link, partition_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = partition_cluster
    began = time.monotonic()
    wait_for(lambda: reachable_from_namespace(link_pg, link), timeout=30,
             what=f"PostgreSQL to accept connections from {link.ns_addr} (the namespace)",
             interval=0.5)
    tls = make_certs(tmp_path / "tls")["node"]
    tls_env = {"CHRONOSYNC_TLS_CA": str(tls.ca), "CHRONOSYNC_TLS_CERT": str(tls.cert),
               "CHRONOSYNC_TLS_KEY": str(tls.key)}

    cluster.start("scheduler", **tls_env)
    for _ in range(2):
        cluster.start("coordinator", **tls_env, **FAST_RETRY)
    cut_off = cluster.processes.start("worker", wrapper=link.exec_prefix(), env={
        **tls_env, **FAST_RETRY,
        "CHRONOSYNC_DSN": ns_dsn(link_pg, link),
        "CHRONOSYNC_WORKER_ADDR": f"{link.ns_addr}:0",
        "CHRONOSYNC_WORKER_CAPACITY": NS_CAPACITY,
    })
    other = cluster.start("worker", **tls_env, **FAST_RETRY,
                          CHRONOSYNC_WORKER_CAPACITY=ROOT_CAPACITY)
    cluster.wait_ready(coordinators=2, workers=2)

    def cut_off_registered() -> tuple[str, str] | None:
        rows = cluster.query("SELECT id, address FROM nodes WHERE kind = 'worker'"
                             " AND address LIKE %s", (f"{link.ns_addr}:%",))
        return (rows[0]["id"], rows[0]["address"]) if rows else None

    cut_off_id, cut_off_address = wait_for(
        cut_off_registered, timeout=30, what="the namespaced worker to register its address")
    other_id = node_id(cluster, other)
    print(f"namespaced worker {cut_off_id} at {cut_off_address}; other worker {other_id}")
    ready_at = time.monotonic()

    # A coordinator judges other nodes only once it has been connected for the TTL plus
    # the pool's wait; let that pass, so that the recovery measured is the TTL's.
    judging_after = TTL + timedelta(seconds=db.POOL_WAIT_S + 0.5)
    wait_for(lambda: cluster.query(
        "SELECT count(*) FILTER (WHERE started_at < now() - %s) AS n FROM nodes"
        " WHERE kind = 'coordinator'", (judging_after,))[0]["n"] == 2, timeout=30,
        what="the coordinators to have been up long enough to judge others", interval=0.2)

    starts, alo_starts, ends = (tmp_path / n for n in ("starts", "alo-starts", "ends"))
    record_start = '"$CHRONOSYNC_TASK_ID $CHRONOSYNC_ATTEMPT"'
    at_most_once = [
        submit(cluster, f"echo {record_start} >> {starts}; sleep {COMMAND_S}; "
                        f"echo {record_start} >> {ends}; echo x")
        for _ in range(AT_MOST_ONCE_TASKS)]
    at_least_once = [
        submit(cluster, f"echo {record_start} >> {alo_starts}; "
                        f'if [ "$CHRONOSYNC_ATTEMPT" = 1 ]; then sleep {COMMAND_S}; fi; '
                        f'echo {record_start} >> {ends}; echo "attempt $CHRONOSYNC_ATTEMPT"',
               delivery="at_least_once", max_attempts=3)
        for _ in range(AT_LEAST_ONCE_TASKS)]
    ids = at_most_once + at_least_once

    def all_started() -> dict[int, dict[str, Any]] | None:
        now = records(cluster, ids)
        return now if all(r["started_at"] is not None for r in now.values()) else None

    wait_or_explain(all_started, timeout=30, what="every task to start",
                    explain=lambda: f"records: {records(cluster, ids)}")

    # The cut. From here on the namespaced worker reaches neither PostgreSQL nor anyone.
    link.cut()
    cut_at = db_now(cluster)
    cut_mono = time.monotonic()
    at_cut = records(cluster, ids)
    elsewhere = {i: r["worker_id"] for i, r in at_cut.items() if r["worker_id"] != cut_off_id}
    ended_early = [i for i, r in at_cut.items()
                   if r["worker_id"] == cut_off_id
                   and (r["completed_at"] is not None or r["failed_at"] is not None)]
    amo_cut = [i for i in at_most_once if i not in elsewhere and i not in ended_early]
    alo_cut = [i for i in at_least_once if i not in elsewhere and i not in ended_early]
    print(f"cut at {cut_at.isoformat()} ({cut_mono - ready_at:.1f}s after the cluster was "
          f"ready); cut off while running: at_most_once {amo_cut}, at_least_once {alo_cut}; "
          f"on the other worker: {elsewhere}; ended before the cut: {ended_early}")
    assert amo_cut and alo_cut, (
        f"no task of each delivery was running on the namespaced worker at the cut: "
        f"{at_cut}")

    def last_heartbeat() -> datetime:
        return cluster.query("SELECT last_heartbeat_at FROM nodes WHERE id = %s",
                             (cut_off_id,))[0]["last_heartbeat_at"]

    # Recovery, by the database clock, after the TTL of silence.
    def recovery_done() -> dict[int, dict[str, Any]] | None:
        now = records(cluster, ids)
        done = (all(now[i]["failed_at"] is not None for i in amo_cut)
                and all(now[i]["completed_at"] is not None or now[i]["failed_at"] is not None
                        for i in alo_cut))
        return now if done else None

    recovered = wait_or_explain(
        recovery_done, timeout=30, what="the cut-off worker's tasks to be recovered",
        explain=lambda: f"records: {records(cluster, ids)}")
    for task_id in amo_cut:
        assert recovered[task_id]["error"] == "worker_lost", recovered[task_id]
    for task_id in alo_cut:
        assert recovered[task_id]["completed_at"] is not None, recovered[task_id]
    recovered_s = time.monotonic() - cut_mono
    heartbeat = last_heartbeat()  # the namespaced worker's last before the cut
    for task_id in amo_cut:
        row = recovered[task_id]
        assert [(a["attempt"], a["error"], a["worker_id"]) for a in row["attempts"]] == [
            (1, "worker_lost", cut_off_id)], row
        assert row["failed_at"] - heartbeat >= TTL, (row, heartbeat)
        assert cut_at < row["failed_at"] < cut_at + RECOVERY_BOUND, (row, cut_at)
    for task_id in alo_cut:
        row = recovered[task_id]
        assert row["worker_id"] == other_id and row["output"] == "attempt 2\n", row
        assert [(a["attempt"], a["error"], a["worker_id"]) for a in row["attempts"]] == [
            (1, "worker_lost", cut_off_id), (2, None, other_id)], row
        lost_at = row["attempts"][0]["finished_at"]
        assert lost_at - heartbeat >= TTL, (row, heartbeat)
        assert cut_at < lost_at < cut_at + RECOVERY_BOUND, (row, cut_at)

    # The cut-off worker killed its commands itself (fenced) before the recovery: none
    # ran to its end, and the worker has an outcome (worker_lost) to write for each.
    cut_ids = set(amo_cut + alo_cut)
    wait_or_explain(
        lambda: all(f"task {i}: no answer from the database" in log_of(cut_off)
                    for i in cut_ids),
        timeout=20, what="the cut-off worker to fence its runs",
        explain=lambda: f"its log: {log_of(cut_off)[-3000:]}")
    assert not cut_ids & {t for t, a in read_pairs(ends) if a == 1}, read_pairs(ends)
    assert last_heartbeat() == heartbeat, "the namespaced worker heartbeat through the cut"
    link.heal()
    healed_at = db_now(cluster)
    heal_mono = time.monotonic()
    print(f"recovered {recovered_s:.1f}s after the cut; healed after "
          f"{heal_mono - cut_mono:.1f}s of partition")

    # Back on the network, the worker tries its late writes: every one is fenced off.
    def fenced() -> bool:
        text = log_of(cut_off)
        return all(f"task {i}: outcome fenced off" in text for i in cut_ids)

    def worker_says() -> str:
        return "the namespaced worker's log on these tasks:\n" + "\n".join(
            line for line in log_of(cut_off).splitlines()
            if any(f"task {i}:" in line for i in cut_ids))

    wait_or_explain(fenced, timeout=60, interval=0.2, explain=worker_says,
                    what="the namespaced worker's late writes to be fenced off")
    fenced_s = time.monotonic() - heal_mono
    wait_for(lambda: cluster.query(
        "SELECT last_heartbeat_at > %s AS back FROM nodes WHERE id = %s",
        (healed_at, cut_off_id))[0]["back"], timeout=30,
        what="the namespaced worker to heartbeat again")

    # The records are the recovery's, untouched by the late writes.
    after = records(cluster, ids)
    changed = {i: after[i] for i in cut_ids if after[i] != recovered[i]}
    assert not changed, f"records changed after the link came back:\n{changed}"
    for task_id in amo_cut:
        row = after[task_id]
        assert row["error"] == "worker_lost" and row["completed_at"] is None, row
        assert row["output"] is None and row["attempt"] == 1, row
    for task_id in set(ids) - cut_ids:  # any that ran elsewhere just succeed, once
        assert cluster.wait_task(task_id, ("succeeded", "failed"))["status"] == "succeeded"

    # At most once: no at_most_once command started twice, wherever it ran; the
    # at_least_once ones started exactly for the attempts recorded.
    amo_started = read_pairs(starts)
    assert sorted(amo_started) == sorted((i, 1) for i in at_most_once), amo_started
    alo_started = read_pairs(alo_starts)
    assert sorted(alo_started) == sorted(
        (i, a["attempt"]) for i in at_least_once for a in after[i]["attempts"]), alo_started

    # The healed cluster carries on, and nothing crashed.
    witness = submit(cluster, f"echo {record_start} >> {starts}")
    assert cluster.wait_task(witness, ("succeeded", "failed"),
                             timeout=30)["status"] == "succeeded"
    assert read_pairs(starts).count((witness, 1)) == 1
    dead = [n.name for n in cluster.processes.nodes if not n.alive()]
    assert not dead, f"nodes exited: {dead}"
    for node in cluster.processes.nodes:
        assert "unexpected error" not in log_of(node), node.name
    print(f"partition test: setup {ready_at - began:.1f}s, recovery {recovered_s:.1f}s after "
          f"the cut, partition {heal_mono - cut_mono:.1f}s, fenced {fenced_s:.1f}s after "
          f"the heal, total {time.monotonic() - began:.1f}s")
