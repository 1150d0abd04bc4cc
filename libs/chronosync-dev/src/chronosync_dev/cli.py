"""``chronosync``: the command line for people (aligned tables) and scripts (``--json``).

    chronosync schedule [--at TIME] [--delivery D] [--timeout S] -- COMMAND...
    chronosync schedule --cron EXPR [--tz ZONE] [--name N] -- COMMAND...
    chronosync tasks [--status S] [--job ID] [--worker NODE] [--text T] [--limit N]
    chronosync task ID      chronosync cancel ID      chronosync nodes
    chronosync retry ID [--idempotency-key K]     chronosync run JOB
    chronosync jobs      chronosync job ID        chronosync pause|resume|delete ID
    chronosync migrate                            chronosync dev

Output options (``-o json|wide``, ``--json``) go before or after the subcommand, as
kubectl's do; each subcommand's ``--help`` ends with an example.

Talks to a scheduler over HTTP (``--url`` or CHRONOSYNC_URL, token from
CHRONOSYNC_API_TOKEN), except ``migrate`` (the database) and ``dev`` (a local cluster).
Exit codes: 0 done, 1 the server said no (4xx), 2 usage, 3 unreachable or 5xx.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from chronocore import labels as worker_labels
from chronocore.queries import load

# The statements the tools run (chronosync_dev/queries.sql).
QUERIES = load("chronosync_dev")

DEFAULT_URL = "http://127.0.0.1:8081"
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def request(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    token = os.environ.get("CHRONOSYNC_API_TOKEN")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            message = exc.reason
        raise CliError(f"{exc.code}: {message}",
                       EXIT_REFUSED if exc.code < 500 else EXIT_UNREACHABLE) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {exc}", EXIT_UNREACHABLE) from None


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    return "\n".join(line.rstrip() for line in lines)


TASK_COLUMNS = ["id", "status", "scheduled_at", "started_at", "worker_id", "error", "command"]
# -o wide adds these.
WIDE_TASK_COLUMNS = [*TASK_COLUMNS[:-1], "attempt", "next_attempt_at", "job_id", "name",
                     "created_at", "command"]
ATTEMPT_COLUMNS = ["attempt", "worker_id", "started_at", "finished_at", "exit_code", "error"]
RECENT_COLUMNS = ["id", "status", "scheduled_at", "error"]
DELIVERY_COLUMNS = ["id", "event", "url", "state", "attempts", "last_status", "last_error"]


def wants_json(args: argparse.Namespace) -> bool:
    return args.json or args.output == "json"


def show(args: argparse.Namespace, data: Any, rows_key: str | None,
         columns: list[str], wide: list[str] | None = None) -> None:
    """JSON for scripts; else a table of ``data[rows_key]``, or one resource as aligned
    ``key value`` lines (fields with no value left out) and its nested lists as tables."""
    if wants_json(args):
        print(json.dumps(data, indent=2))
    elif rows_key is not None:
        print(table(data[rows_key], wide if wide and args.output == "wide" else columns))
    else:
        print(describe(data))


def describe(data: dict[str, Any]) -> str:
    nested = {"attempts": ATTEMPT_COLUMNS, "recent": RECENT_COLUMNS,
              "deliveries": DELIVERY_COLUMNS}
    fields = [(k, v) for k, v in data.items()
              if k not in nested and v not in (None, "", [], {})]
    width = max((len(k) for k, _ in fields), default=0)
    lines = []
    for key, value in fields:
        if key == "webhooks":  # their URLs and events (the secret is never shown)
            value = "; ".join(f"{h['url']} ({', '.join(h['events'])})" for h in value)
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        lines.append(f"{key.ljust(width)}  {value}")
    for key, columns in nested.items():
        if data.get(key):
            lines += ["", f"{key}:", table(data[key], columns)]
    return "\n".join(lines)


def cmd_schedule(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise CliError("give the command after --", EXIT_USAGE)
    body: dict[str, Any] = {"command": " ".join(command), "delivery": args.delivery}
    if args.at and args.cron:
        raise CliError("give --at (one run) or --cron (recurring), not both", EXIT_USAGE)
    if args.at:
        body["scheduled_at"] = args.at
    if args.cron:
        body["cron"] = args.cron
        body["timezone"] = args.tz
    for option in ("name", "concurrency_policy", "misfire_policy"):
        if getattr(args, option):
            body[option] = getattr(args, option)
    if args.timeout:
        body["timeout_s"] = args.timeout
    if args.idempotency_key:
        body["idempotency_key"] = args.idempotency_key
    if args.target:
        labels = dict(part.partition("=")[::2] for part in args.target.split(",") if part)
        body["target"] = {"labels": labels, **({"all": True} if args.all else {})}
    elif args.all:
        raise CliError("--all needs --target", EXIT_USAGE)
    made = request(args.url, "POST", "/schedule", body)
    if wants_json(args):
        print(json.dumps(made, indent=2))
    elif made["kind"] == "job":
        next_run = (made["next_runs"] or ["none"])[0]
        print(f"job {made['id']} scheduled: {made['description']} ({made['timezone']}); "
              f"next run {next_run}")
    else:
        print(f"task {made['id']} scheduled for {made['scheduled_at']}")


def cmd_tasks(args: argparse.Namespace) -> None:
    filters = {"limit": args.limit, "status": args.status, "job_id": args.job,
               "worker": args.worker, "text": args.text}
    query = "?" + urllib.parse.urlencode({k: v for k, v in filters.items() if v is not None})
    if not args.watch:
        show(args, request(args.url, "GET", "/tasks" + query), "tasks", TASK_COLUMNS,
             WIDE_TASK_COLUMNS)
        return
    # Ctrl-C ends the watch even where SIGINT was ignored when it started (a background
    # job of a non-interactive shell), as it ends `chronosync dev`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:  # until Ctrl-C
            data = request(args.url, "GET", "/tasks" + query)
            if not wants_json(args):
                print("\033[H\033[2J", end="")  # clear the terminal
                print(f"{args.url}  {time.strftime('%H:%M:%S')}  (Ctrl-C to stop)")
            show(args, data, "tasks", TASK_COLUMNS, WIDE_TASK_COLUMNS)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass


def cmd_logs(args: argparse.Namespace) -> None:
    """A task's output (the last 64 KiB of stdout and stderr), as it was written."""
    task = request(args.url, "GET", f"/tasks/{args.id}")
    if wants_json(args):
        print(json.dumps({"id": task["id"], "status": task["status"],
                          "output": task["output"]}))
    elif task["output"]:
        sys.stdout.write(task["output"])
    else:
        print(f"task {task['id']} is {task['status']}: {_why_no_output(task)}",
              file=sys.stderr)


def _why_no_output(task: dict[str, Any]) -> str:
    status = task["status"]
    if status == "scheduled":
        return f"no output yet (due {task['scheduled_at']})"
    if status == "retrying":
        return f"no output yet (next attempt due {task['next_attempt_at']})"
    if status in ("picked", "running"):
        return "no output yet (its output is stored when the attempt ends)"
    if status == "cancelled" and not task["started_at"]:
        return "it never ran"
    return "it printed nothing"


def cmd_jobs(args: argparse.Namespace) -> None:
    data = request(args.url, "GET", "/jobs")
    for job in data["jobs"]:
        job["next_run"] = (job["next_runs"] or [None])[0]
    columns = ["id", "name", "cron", "timezone", "paused", "next_run", "description",
               "command"]
    show(args, data, "jobs", columns,
         [*columns[:-1], "concurrency_policy", "misfire_policy", "command"])


# Commands that make one request about one task or job and show what it answers.
ONE_REQUEST = {"task": ("GET", "/tasks/{}", None), "cancel": ("POST", "/tasks/{}/cancel", {}),
               "job": ("GET", "/jobs/{}", None),
               "pause": ("PATCH", "/jobs/{}", {"paused": True}),
               "resume": ("PATCH", "/jobs/{}", {"paused": False})}


def cmd_one_request(args: argparse.Namespace) -> None:
    method, path, body = ONE_REQUEST[args.cmd]
    show(args, request(args.url, method, path.format(args.id), body), None, [])


def cmd_delete(args: argparse.Namespace) -> None:
    request(args.url, "DELETE", f"/jobs/{args.id}")
    if not wants_json(args):
        print(f"deleted job {args.id}")


def cmd_retry(args: argparse.Namespace) -> None:
    body = {"idempotency_key": args.idempotency_key} if args.idempotency_key else {}
    _show_made(args, request(args.url, "POST", f"/tasks/{args.id}/retry", body))


def cmd_run(args: argparse.Namespace) -> None:
    _show_made(args, request(args.url, "POST", f"/jobs/{args.id}/run", {}))


def _show_made(args: argparse.Namespace, task: dict[str, Any]) -> None:
    """A task made by hand: one line for people (its id first, for scripts that cut it),
    the whole task with -o json."""
    if wants_json(args):
        print(json.dumps(task, indent=2))
        return
    origin = f"retry of task {task['retry_of']}" if task["retry_of"] else \
        f"run of job {task['job_id']}"
    print(f"task {task['id']} made ({origin}), due {task['scheduled_at']}")


def cmd_nodes(args: argparse.Namespace) -> None:
    columns = ["id", "kind", "state", "pid", "address", "last_heartbeat_at", "capacity",
               "running", "labels"]
    data = request(args.url, "GET", "/nodes")
    if not wants_json(args):
        for node in data["nodes"]:
            if node.get("labels"):
                node["labels"] = worker_labels.describe(node["labels"])
    show(args, data, "nodes", columns, [*columns, "host", "started_at"])


def cmd_migrate(args: argparse.Namespace) -> None:
    from chronocore.migrate import apply_migrations

    dsn = os.environ.get("CHRONOSYNC_DSN")
    if not dsn:
        raise CliError("CHRONOSYNC_DSN is required", EXIT_USAGE)
    applied = apply_migrations(dsn)
    print(f"applied {applied}" if applied else "schema up to date")


# What `chronosync dev` tells each node to give running commands on Ctrl-C, and waits for.
DEV_SHUTDOWN_GRACE_S = 10.0


def cmd_dev(args: argparse.Namespace) -> None:
    """A whole local cluster in the foreground until Ctrl-C or SIGTERM; nodes that die
    are restarted (see ``Supervisor``)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from chronocore.migrate import apply_migrations
    from chronocore.prctl import make_undumpable
    from chronosync_dev.devcluster import CrashLoop, ProcessCluster, Supervisor

    make_undumpable()  # it holds the database's password: commands may not read it
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    addr = os.environ.get("CHRONOSYNC_HTTP_ADDR", "127.0.0.1:8081")
    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    _refuse_a_taken_address(addr)
    lock = _claim_data_dir(data_dir) if data_dir is not None else None
    base = data_dir or Path(tempfile.mkdtemp(prefix="chronosync-dev-"))
    dsn = os.environ.get("CHRONOSYNC_DSN")
    postgres = None
    if not dsn:
        postgres = _dev_postgres(base)
        dsn = postgres.dsn()
        shown = make_conninfo(dsn, password="***") if "password" in conninfo_to_dict(dsn) \
            else dsn
        print(f"dev: ephemeral PostgreSQL at {shown} (data in {postgres.datadir})",
              flush=True)
        print(f"dev: {postgres.postgres.describe()}; CHRONOSYNC_DSN=... uses a server of "
              "your own instead", flush=True)
    else:
        print("dev: PostgreSQL at $CHRONOSYNC_DSN (your own server)", flush=True)
    env = {**_dev_node_env(base, postgres.datadir if postgres else None),
           "CHRONOSYNC_SHUTDOWN_GRACE_S": f"{DEV_SHUTDOWN_GRACE_S:g}"}
    cluster = ProcessCluster(dsn=dsn, env=env)
    supervisor = Supervisor(cluster, say=lambda line: print(line, flush=True))
    workdirs = base / "work"
    failure = None
    try:
        apply_migrations(dsn)
        cluster.start("scheduler")
        for _ in range(args.coordinators):
            cluster.start("coordinator")
        for number in range(1, args.workers + 1):
            workdir = workdirs / f"worker-{number}"
            workdir.mkdir(parents=True, exist_ok=True)
            workdir.chmod(0o1777)  # commands may run as another user ('nobody' as root)
            cluster.start("worker", env={"CHRONOSYNC_WORKDIR": str(workdir)})
        print(f"dev: API at http://{addr}, dashboard http://{addr}/  (Ctrl-C stops "
              "everything; a node that dies is restarted)", flush=True)
        status = DevStatus(dsn, dashboard=f"http://{addr}/", supervisor=supervisor)
        while not stop.wait(0.5):
            supervisor.check()
            status.maybe_print()
    except CrashLoop as exc:
        failure = str(exc)
    finally:
        print(f"dev: stopping (running commands get up to {DEV_SHUTDOWN_GRACE_S:g} s to "
              "finish)", flush=True)
        cluster.stop(grace_s=DEV_SHUTDOWN_GRACE_S + 5)
        if postgres is not None:
            postgres.stop()
            # Its data directory, or the temporary one it fell back to.
            shutil.rmtree(postgres.datadir if postgres.datadir.parent == base
                          else postgres.datadir.parent, ignore_errors=True)
        shutil.rmtree(workdirs, ignore_errors=True)
        if data_dir is None:
            shutil.rmtree(base, ignore_errors=True)
        if lock is not None:
            lock.close()
        print("dev: stopped", flush=True)
    if failure is not None:
        raise CliError(failure, EXIT_REFUSED)


def _refuse_a_taken_address(addr: str) -> None:
    """Say at once that the API's address is taken (another `make dev`?), before
    starting anything."""
    from chronocore.config import ConfigError, split_host_port

    try:
        host, port = split_host_port(addr, name="CHRONOSYNC_HTTP_ADDR")
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(f"cannot listen on {addr} ({exc.strerror}): is another "
                           "`make dev` running? Stop it, or set CHRONOSYNC_HTTP_ADDR to "
                           "another address", EXIT_REFUSED) from None


def _claim_data_dir(data_dir: Path) -> IO[str]:
    """Hold ``data_dir`` for this process (a lock the kernel drops when it exits, however
    it exits), and refuse a data directory that a PostgreSQL still runs on: nothing may
    delete the files of a running server."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = open(data_dir / "dev.lock", "a+")  # noqa: SIM115 (held until the cluster stops)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise CliError(f"{data_dir} is in use by another `chronosync dev` (pid "
                       f"{holder}); stop it first, or give another --data-dir",
                       EXIT_REFUSED) from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    postmaster = _running_postmaster(data_dir / "pgdata")
    if postmaster is not None:
        lock.close()
        raise CliError(f"a PostgreSQL (pid {postmaster}) still runs on "
                       f"{data_dir / 'pgdata'}, left by a `chronosync dev` that did not stop "
                       f"cleanly; stop it (kill {postmaster}) and try again", EXIT_REFUSED)
    return lock


def _running_postmaster(pgdata: Path) -> int | None:
    """The pid in ``postmaster.pid`` if that process is alive and is a PostgreSQL."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"postgres" in cmdline else None


class DevStatus:
    """The compact live line `make dev` prints: tasks per second, running, nodes alive."""

    EVERY_S = 10.0

    def __init__(self, dsn: str, *, dashboard: str, supervisor: Any) -> None:
        self._dsn = dsn
        self._dashboard = dashboard
        self._supervisor = supervisor
        self._last: tuple[float, int] | None = None
        self._next_at = time.monotonic() + 2.0

    def maybe_print(self) -> None:
        import psycopg

        now = time.monotonic()
        if now < self._next_at:
            return
        self._next_at = now + self.EVERY_S
        try:
            with psycopg.connect(self._dsn, connect_timeout=2) as conn:
                finished, running, alive, known = conn.execute(
                    QUERIES["dev_status"]).fetchone()
        except psycopg.Error:
            print("dev: status: database unreachable", flush=True)
            return
        rate = 0.0
        if self._last is not None:
            rate = (finished - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, finished)
        print(f"dev: {rate:.1f} tasks/s · {running} running · {finished} done · "
              f"nodes alive {alive}/{known} · restarts {self._supervisor.restarts} · "
              f"dashboard {self._dashboard}", flush=True)


def _dev_node_env(base: Path, pgdata: Path | None) -> dict[str, str]:
    """Throwaway mutual-TLS certificates for the cluster, and commands kept away from
    the nodes: as root, run as 'nobody'; otherwise, in a sandbox hiding the database's
    files and the certificates, where the kernel allows it."""
    from chronocore.runner import Sandbox
    from chronocore.tls import make_certs

    files = make_certs(base / "certs")["node"]
    env = {"CHRONOSYNC_TLS_CA": str(files.ca), "CHRONOSYNC_TLS_CERT": str(files.cert),
           "CHRONOSYNC_TLS_KEY": str(files.key)}
    print(f"dev: throwaway TLS certificates in {files.ca.parent}", flush=True)
    chosen = ("CHRONOSYNC_RUN_AS", "CHRONOSYNC_ALLOW_ROOT", "CHRONOSYNC_SANDBOX")
    if any(os.environ.get(name) for name in chosen):
        return env
    if os.geteuid() == 0:
        env["CHRONOSYNC_RUN_AS"] = "nobody"
        print("dev: running as root, so commands run as 'nobody' (set CHRONOSYNC_RUN_AS "
              "to choose another user)", flush=True)
        return env
    hide = tuple(str(p) for p in (pgdata, files.ca.parent) if p is not None)
    try:
        Sandbox.lookup(hide).check()
    except OSError as exc:
        print(f"dev: commands run as you, beside the nodes: they could read the database's"
              f" files and signal the nodes (no sandbox here: {exc})", flush=True)
        return env
    env.update(CHRONOSYNC_SANDBOX="1", CHRONOSYNC_SANDBOX_HIDE=":".join(hide))
    print("dev: commands run in a sandbox: they cannot see or signal the nodes, nor read "
          "the database's files or the certificates", flush=True)
    return env


def cmd_certs(args: argparse.Namespace) -> None:
    """A throwaway CA and node certificate (openssl), for development and compose."""
    from chronocore.tls import make_certs

    files = make_certs(Path(args.directory))["node"]
    print(f"CHRONOSYNC_TLS_CA={files.ca}\nCHRONOSYNC_TLS_CERT={files.cert}\n"
          f"CHRONOSYNC_TLS_KEY={files.key}")


def _dev_postgres(data_dir: Path) -> Any:
    """A fresh PostgreSQL in ``data_dir`` (or a temp dir if the server user, never root,
    cannot reach it). The caller has made sure no server runs on it."""
    from chronosync_dev.pgcluster import FAST_TEST_SETTINGS, LocalCluster, PostgresError

    settings = {**FAST_TEST_SETTINGS, "fsync": "on"}
    shutil.rmtree(data_dir / "pgdata", ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o755)
    postgres = LocalCluster(datadir=data_dir / "pgdata", settings=settings)
    try:
        postgres.start()
        return postgres
    except PostgresError as exc:
        print(f"dev: cannot use {data_dir} ({exc}); using a temporary directory",
              flush=True)
    base = Path(tempfile.mkdtemp(prefix="chronosync-dev-"))
    base.chmod(0o755)
    postgres = LocalCluster(datadir=base / "pgdata", settings=settings)
    postgres.start()
    return postgres


def _output_options(p: argparse.ArgumentParser, *, default: Any) -> None:
    p.add_argument("-o", "--output", choices=["table", "wide", "json"], default=default,
                   help="table (default), wide (more columns) or json")
    p.add_argument("--json", action="store_true", default=default,
                   help="same as -o json")


def _url(text: str) -> str:
    """``localhost:8081`` -> ``http://localhost:8081``; a full URL as it is."""
    return text if "://" in text else f"http://{text}"


EXAMPLES = {
    "schedule": ["chronosync schedule -- echo hello",
                 "chronosync schedule --at 2026-12-25T22:34:00+05:30 -- ./backup.sh",
                 "chronosync schedule --cron '*/15 * * * MON-FRI' --tz Europe/Berlin "
                 "--name report -- ./report.sh"],
    "tasks": ["chronosync tasks --status failed -o wide", "chronosync tasks --watch",
              "chronosync tasks --text pg_dump --worker worker-db-3-1234-ab12"],
    "task": ["chronosync task 17 -o json"],
    "cancel": ["chronosync cancel 17"],
    "retry": ["chronosync retry 17", "chronosync retry 17 --idempotency-key retry-17-once"],
    "run": ["chronosync run 3"],
    "logs": ["chronosync logs 17"],
    "jobs": ["chronosync jobs -o wide"],
    "job": ["chronosync job 3"],
    "pause": ["chronosync pause 3"],
    "resume": ["chronosync resume 3"],
    "delete": ["chronosync delete 3"],
    "nodes": ["chronosync nodes    # then: kill -9 <a worker's PID>, and watch"],
    "migrate": ["CHRONOSYNC_DSN=postgresql://... chronosync migrate"],
    "certs": ["chronosync certs ./certs"],
    "dev": ["chronosync dev --data-dir .dev --workers 3"],
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="chronosync", description="ChronoSync command line")
    p.add_argument("--url", type=_url, default=_url(os.environ.get("CHRONOSYNC_URL",
                                                                   DEFAULT_URL)),
                   help="the scheduler, e.g. localhost:8081 (CHRONOSYNC_URL)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _output_options(p, default=None)
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, text: str, func: Any) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=text, description=text,
                           epilog="example:\n  " + "\n  ".join(EXAMPLES[name]),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _output_options(c, default=argparse.SUPPRESS)  # after the subcommand too
        c.set_defaults(func=func)
        return c

    s = command("schedule", "run a command at an instant (default: now), or on a cron "
                "schedule", cmd_schedule)
    s.add_argument("--at", help="RFC 3339 time with offset, e.g. 2026-12-25T22:34:00+05:30")
    s.add_argument("--delivery", default="at_most_once",
                   choices=["at_most_once", "at_least_once"])
    s.add_argument("--timeout", type=float, help="seconds before the command is killed")
    s.add_argument("--idempotency-key")
    s.add_argument("--cron", help="a recurring job: 5 or 6 fields, or @daily and friends")
    s.add_argument("--tz", default="UTC", help="the cron's IANA time zone")
    s.add_argument("--name", help="a unique name for the job")
    s.add_argument("--concurrency-policy", choices=["allow", "forbid", "replace"])
    s.add_argument("--misfire-policy", choices=["run_once", "skip", "run_all"])
    s.add_argument("--target", metavar="K=V,K=V",
                   help="run only on a live worker with these labels (see nodes)")
    s.add_argument("--all", action="store_true",
                   help="with --target: run once on every matching live worker")
    s.add_argument("command", nargs=argparse.REMAINDER)
    t = command("tasks", "list tasks, newest first", cmd_tasks)
    t.add_argument("--status")
    t.add_argument("--job", type=int, help="only this job's tasks")
    t.add_argument("--worker", help="only the tasks this worker ran (its node id)")
    t.add_argument("--text", help="only tasks whose command contains this, ignoring case")
    t.add_argument("--limit", type=int, default=20)
    t.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    command("jobs", "recurring jobs", cmd_jobs)
    for name, func, text in (("task", cmd_one_request, "one task with its attempts"),
                             ("cancel", cmd_one_request, "cancel a task"),
                             ("logs", cmd_logs, "a task's output"),
                             ("job", cmd_one_request, "one job with its next and recent runs"),
                             ("pause", cmd_one_request, "pause a job"),
                             ("resume", cmd_one_request, "resume a job"),
                             ("delete", cmd_delete, "delete a job (its tasks stay)")):
        command(name, text, func).add_argument("id", type=int)
    r = command("retry", "run a finished task again: a new task, due now, with the same "
                "command, env and delivery (a job's task stays the job's)", cmd_retry)
    r.add_argument("id", type=int, help="the finished task")
    r.add_argument("--idempotency-key", help="resending with the same key makes no second "
                   "retry")
    command("run", "run a job now: an extra occurrence, as its concurrency policy allows "
            "(its schedule does not move)", cmd_run).add_argument("id", type=int,
                                                                 help="the job")
    command("nodes", "nodes, their pids and liveness", cmd_nodes)
    command("migrate", "apply database migrations", cmd_migrate)
    command("certs", "write a throwaway CA and node certificate",
            cmd_certs).add_argument("directory")
    d = command("dev", "run a local cluster in the foreground", cmd_dev)
    d.add_argument("--coordinators", type=int, default=2)
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--data-dir", help="where the ephemeral PostgreSQL keeps its data")
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("chronosync-dev")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.output = args.output or "table"
    try:
        args.func(args)
    except CliError as exc:
        print(f"chronosync: {exc}", file=sys.stderr)
        return exc.code
    return 0


if __name__ == "__main__":
    sys.exit(main())
