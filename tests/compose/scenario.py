"""`make compose-test`: `make up` in a real Docker engine, then what operators meet.

The project's Dockerfile and docker-compose.yml, unchanged, on the engine engine.py finds or
starts (with stand-in base images when no registry answers). In order:

  up          `make up` (detached), every service healthy; the token kept in .env
  nodes       /nodes: 2 schedulers, 2 coordinators, 3 workers alive, at reachable addresses,
              with the capacity compose gives each worker
  seed        the README's curl (a one-off "echo hello") through each scheduler, on time
  kill        20 tasks (half at_least_once); `docker kill` of the busiest worker and of a
              coordinator mid-run: every task ends, at_most_once ones on the killed worker
              as worker_lost, at_least_once ones succeeded, nothing run twice
  crash       a worker's PID 1 killed (a crash, not a stop): restarted, rejoins
  zombies     commands leaving a background child: no zombie stays in a worker container
  isolation   a command in the image as built runs as its own user: it reads no other
              process's environment (the DSN's password), no key, and signals nothing
  postgres    PostgreSQL stopped 15 s, then started: 503s meanwhile, nothing accepted lost
  daemon      the Docker daemon restarted (a host reboot): the whole cluster comes back
  down        `make down ARGS=-v`: no container, network or volume left

Bounded in time (COMPOSE_TEST_TIMEOUT, default 2400 s); cleans up even when it fails. The
closing lines name each step with its figure. COMPOSE_TEST_STEPS=up,zombies,down runs
only those steps (up first).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from engine import ROOT, Engine, run

T = TypeVar("T")
PROJECT = "chronosync-compose-test"
PORTS = (8081, 8082)
CAPACITY = 3  # per worker container, through compose's CHRONOSYNC_WORKER_CAPACITY
LONG_RUNNING = {"postgres": 1, "scheduler-1": 1, "scheduler-2": 1, "coordinator": 2,
                "worker": 3}
TERMINAL = ("succeeded", "failed", "cancelled")
ZOMBIES = ("import os\nn = 0\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
           "    try:\n        s = open(f'/proc/{p}/stat').read()\n    except OSError:\n"
           "        continue\n    n += s[s.rindex(')') + 2] == 'Z'\nprint(n)")
# What a command can reach of the rest of its container: every process not its own user's
# (the worker, its reaper, tini), the certificates. Prints what it read and what it could
# signal; "Permission denied" is the expected answer to each.
PROBE = ("echo uid=$(id -u); for p in /proc/[0-9]*; do n=${p#/proc/}; "
         "[ \"$(stat -c %u $p 2>/dev/null)\" = \"$(id -u)\" ] && continue; "
         "echo \"pid $n: $(tr '\\0' ' ' < $p/environ 2>&1)\"; "
         "kill -0 $n 2>/dev/null && echo signalled-$n; done; "
         "for f in /certs/node.key /certs/ca.key; do cat $f 2>&1; done; true")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str,
             every: float = 1.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Scenario:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.env = {k: v for k, v in engine.env.items() if k != "CHRONOSYNC_API_TOKEN"}
        self.env.update(COMPOSE_PROJECT_NAME=PROJECT, CHRONOSYNC_WORKER_CAPACITY=str(CAPACITY),
                        # vfs copies the whole image per container: creating 7 at once
                        # on a busy host outlasts compose v1's 60 s API timeout.
                        COMPOSE_HTTP_TIMEOUT="600")
        self.token = ""
        self.figures: list[tuple[str, str]] = []

    # --- plumbing -------------------------------------------------------------------------

    def make(self, *args: str, timeout: float = 1800) -> None:
        run(["make", "-s", "-C", str(ROOT), *args], env=self.env, timeout=timeout)

    def compose(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        has_v2 = run(["docker", "compose", "version"], env=self.env, check=False).returncode
        argv = ["docker", "compose"] if has_v2 == 0 else ["docker-compose"]
        return run([*argv, *args], env=self.env, timeout=timeout, check=False)

    def containers(self, *, all_: bool = True) -> list[dict[str, Any]]:
        names = self.engine.docker("ps", *(["-a"] if all_ else []), "-q", "--filter",
                                   f"label=com.docker.compose.project={PROJECT}").stdout.split()
        if not names:
            return []
        return json.loads(self.engine.docker("inspect", *names).stdout)

    def of(self, service: str) -> list[dict[str, Any]]:
        return [c for c in self.containers()
                if c["Config"]["Labels"].get("com.docker.compose.service") == service]

    def by_hostname(self, host: str) -> dict[str, Any]:
        (found,) = [c for c in self.containers() if c["Config"]["Hostname"] == host]
        return found

    def api(self, method: str, path: str, body: Any = None, *, port: int = 8081,
            ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, payload = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        return status, (json.loads(payload) if payload else None)

    def api_or_none(self, method: str, path: str, body: Any = None, *, port: int = 8081,
                    ) -> tuple[int, Any] | None:
        try:
            return self.api(method, path, body, port=port)
        except (OSError, ValueError):
            return None

    def submit(self, body: dict[str, Any], *, port: int = 8081) -> dict[str, Any]:
        status, task = self.api("POST", "/schedule", body, port=port)
        assert status == 201, (status, task)
        return task

    def task(self, task_id: int) -> dict[str, Any]:
        status, task = self.api("GET", f"/tasks/{task_id}")
        assert status == 200, (status, task)
        return task

    def wait_tasks_end(self, ids: list[int], *, timeout: float) -> dict[int, dict[str, Any]]:
        ended: dict[int, dict[str, Any]] = {}

        def all_ended() -> bool:
            for task_id in ids:
                if task_id not in ended:
                    answer = self.api_or_none("GET", f"/tasks/{task_id}")
                    if answer and answer[0] == 200 and answer[1]["status"] in TERMINAL:
                        ended[task_id] = answer[1]
            return len(ended) == len(ids)

        wait_for(all_ended, timeout=timeout, what=f"{len(ids)} tasks to end")
        return ended

    def alive_nodes(self) -> list[dict[str, Any]] | None:
        answer = self.api_or_none("GET", "/nodes")
        if not answer or answer[0] != 200:
            return None
        return [n for n in answer[1]["nodes"] if n["state"] == "alive"]

    def cluster_alive(self) -> list[dict[str, Any]] | None:
        """The alive nodes once there are 2 schedulers, 2 coordinators and 3 workers."""
        nodes = self.alive_nodes()
        if nodes is None:
            return None
        counts = Counter(n["kind"] for n in nodes)
        ok = counts == Counter(scheduler=2, coordinator=2, worker=3)
        return nodes if ok else None

    def healthy(self) -> bool:
        running = Counter()
        for c in self.containers():
            service = c["Config"]["Labels"].get("com.docker.compose.service")
            if service == "certs":
                continue
            health = c["State"].get("Health", {}).get("Status")
            if c["State"]["Running"] and health in (None, "healthy"):
                running[service] += 1
        return running == Counter(LONG_RUNNING)

    def zombies(self, container: dict[str, Any]) -> int:
        out = self.engine.docker("exec", container["Id"], "python", "-c", ZOMBIES).stdout
        return int(out.strip())

    # --- the steps ------------------------------------------------------------------------

    def up(self) -> None:
        for port in PORTS:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    raise AssertionError(f"port {port} is in use: stop what listens there "
                                         "(a `make up` or `make dev`?) and run again")
        start = time.monotonic()
        self.make("up", "UP_ARGS=--detach")
        built = time.monotonic() - start
        env_file = (ROOT / ".env").read_text()
        self.token = next(line.split("=", 1)[1] for line in env_file.splitlines()
                          if line.startswith("CHRONOSYNC_API_TOKEN="))
        assert self.token, ".env keeps the token"
        # Later compose commands find the token in .env: none in their environment.
        ps = self.compose("ps")
        assert ps.returncode == 0, ps.stderr
        (certs,) = self.of("certs")
        assert certs["State"]["ExitCode"] == 0, "the certs service made the certificates"
        wait_for(self.healthy, timeout=300, what="every service to be healthy")
        total = time.monotonic() - start
        self.figures.append(("up", f"healthy {total - built:.0f} s after `make up` returned "
                                   f"({total:.0f} s with the image build)"))

    def nodes(self) -> None:
        nodes = wait_for(self.cluster_alive, timeout=60, what="2+2+3 alive nodes")
        hostnames = {c["Config"]["Hostname"] for c in self.containers()}
        schedulers = sorted(n["address"] for n in nodes if n["kind"] == "scheduler")
        for address in schedulers:
            host, _, port = address.rpartition(":")
            assert host in hostnames and port == "8081", f"scheduler advertises {address}"
        for worker in (n for n in nodes if n["kind"] == "worker"):
            assert worker["capacity"] == CAPACITY, worker
            assert worker["address"].rpartition(":")[0] in hostnames, worker
        self.figures.append(("nodes", f"2 schedulers, 2 coordinators, 3 workers alive; "
                                      f"schedulers at {', '.join(schedulers)}; "
                                      f"worker capacity {CAPACITY}"))

    def seed(self) -> None:
        lateness = []
        for port in PORTS:
            at = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()
            body = json.dumps({"command": "echo hello", "scheduled_at": at})
            out = run(["curl", "-sS", "-X", "POST", f"localhost:{port}/schedule",
                       "-H", f"Authorization: Bearer {self.token}", "-d", body]).stdout
            task = json.loads(out)
            assert task.get("kind") == "task", out
            (done,) = self.wait_tasks_end([task["id"]], timeout=60).values()
            assert done["status"] == "succeeded" and done["output"].strip() == "hello", done
            started = datetime.fromisoformat(done["started_at"])
            scheduled = datetime.fromisoformat(done["scheduled_at"])
            assert started >= scheduled, done
            lateness.append(f":{port} {(started - scheduled).total_seconds():.2f} s")
        self.figures.append(("seed", "curl's echo hello succeeded through both schedulers, "
                                     "started late by " + ", ".join(lateness)))

    def kill(self) -> None:
        ids, delivery = [], {}
        for i in range(20):
            mode = "at_least_once" if i % 2 else "at_most_once"
            task = self.submit({"command": f"sleep 8; echo done-{i}", "delivery": mode})
            ids.append(task["id"])
            delivery[task["id"]] = mode

        def busy() -> list[dict[str, Any]] | None:
            running = [t for t in (self.task(i) for i in ids) if t["status"] == "running"]
            return running if len(running) >= 2 * CAPACITY else None

        running = wait_for(busy, timeout=60, what="tasks to be running")
        per_worker = Counter(t["worker_id"] for t in running)
        victim_id = per_worker.most_common(1)[0][0]
        nodes = {n["id"]: n for n in self.alive_nodes() or []}
        victim = self.by_hostname(nodes[victim_id]["host"])
        on_victim = [t["id"] for t in running if t["worker_id"] == victim_id]
        coordinator = self.of("coordinator")[0]
        killed_at = time.monotonic()
        self.engine.docker("kill", victim["Id"])
        self.engine.docker("kill", coordinator["Id"])
        log(f"killed worker {victim['Name']} ({len(on_victim)} running) "
            f"and coordinator {coordinator['Name']}")
        ended = self.wait_tasks_end(ids, timeout=180)
        recovered = time.monotonic() - killed_at
        for task_id, task in ended.items():
            successes = [a for a in task["attempts"] if a["exit_code"] == 0]
            assert len(successes) <= 1, f"task {task_id} ran to success twice: {task}"
            if delivery[task_id] == "at_least_once":
                assert task["status"] == "succeeded", task
            elif task_id in on_victim:
                assert task["status"] == "failed" and task["error"] == "worker_lost", task
                assert len(task["attempts"]) == 1, task
            else:
                assert task["status"] == "succeeded", task
                assert len(task["attempts"]) == 1, task
        lost = sum(1 for i in on_victim if delivery[i] == "at_most_once")
        self.figures.append(("kill", f"20 tasks all ended {recovered:.0f} s after the kills; "
                                     f"{lost} at_most_once worker_lost, at_least_once all "
                                     "succeeded, none run twice"))
        # `docker kill` is an operator's stop: no restart policy applies. Start them again.
        self.engine.docker("start", victim["Id"], coordinator["Id"])
        wait_for(self.cluster_alive, timeout=120, what="the killed nodes to come back")

    def crash(self) -> None:
        worker = self.of("worker")[0]
        restarts = worker["RestartCount"]
        before = {n["id"] for n in self.alive_nodes() or []}
        if not self.engine.owned:
            self.figures.append(("crash", "skipped: the engine's processes are not this "
                                          "host's (an engine started elsewhere)"))
            return
        crashed_at = time.monotonic()
        os.kill(worker["State"]["Pid"], signal.SIGKILL)

        def rejoined() -> bool:
            (now,) = [c for c in self.of("worker") if c["Id"] == worker["Id"]]
            nodes = self.cluster_alive()
            fresh = [n for n in nodes or [] if n["kind"] == "worker" and n["id"] not in before
                     and n["host"] == worker["Config"]["Hostname"]]
            return now["RestartCount"] > restarts and bool(fresh)

        wait_for(rejoined, timeout=120, what="the crashed worker to restart and rejoin")
        self.figures.append(("crash", f"worker's PID 1 killed: restarted and rejoined in "
                                      f"{time.monotonic() - crashed_at:.0f} s"))

    def zombies_step(self) -> None:
        ids = [self.submit({"command": "sleep 1 & echo bg"})["id"] for _ in range(12)]
        ended = self.wait_tasks_end(ids, timeout=60)
        assert all(t["status"] == "succeeded" for t in ended.values()), ended
        workers = self.of("worker")
        hosts = Counter(self.by_hostname(n["host"])["Name"]
                        for n in self.alive_nodes() or [] if n["kind"] == "worker"
                        for t in ended.values() if t["worker_id"] == n["id"])
        # The background children die within a second or two; none may stay a zombie.
        counts: dict[str, int] = {}

        def none_left() -> bool:
            counts.update({c["Name"]: self.zombies(c) for c in workers})
            return not any(counts.values())

        try:
            wait_for(none_left, timeout=20, what="no zombie in the worker containers")
        except AssertionError:
            raise AssertionError(f"zombies stay in the worker containers: {counts}") from None
        self.figures.append(("zombies", f"0 in {len(workers)} worker containers after "
                                        f"{len(ids)} commands leaving a background child "
                                        f"(ran on {dict(hosts)})"))

    def isolation(self) -> None:
        probes = [self.submit({"command": PROBE})["id"] for _ in range(2 * CAPACITY)]
        ended = self.wait_tasks_end(probes, timeout=60)
        workers = {t["worker_id"] for t in ended.values()}
        key_line = "BEGIN"  # of any PEM key
        for task in ended.values():
            output = task["output"]
            assert task["status"] == "succeeded", task
            assert "uid=10002" in output, f"the command ran as its own user: {output}"
            assert "Permission denied" in output, output
            for secret in ("password=", "CHRONOSYNC_DSN", key_line, "signalled"):
                assert secret not in output, (secret, output)
        self.figures.append(("isolation", f"{len(probes)} probes on {len(workers)} workers "
                                          "ran as uid 10002: read no process's environment, "
                                          "no key, signalled nothing"))

    def postgres(self) -> None:
        (pg,) = self.of("postgres")
        before = [self.submit({"command": f"sleep 4; echo pg-{i}", "delivery": "at_least_once"})
                  ["id"] for i in range(6)]
        stopped_at = time.monotonic()
        self.engine.docker("stop", "-t", "10", pg["Id"])
        statuses: Counter[int | str] = Counter()
        accepted = []
        while time.monotonic() - stopped_at < 15:
            answer = self.api_or_none("POST", "/schedule", {"command": "echo during"},
                                      port=PORTS[sum(statuses.values()) % 2])
            statuses[answer[0] if answer else "no answer"] += 1
            if answer and answer[0] == 201:
                accepted.append(answer[1]["id"])
            time.sleep(0.5)
        assert statuses[503] > 0, f"no 503 while PostgreSQL was down: {statuses}"
        assert set(statuses) <= {503, 201}, f"while PostgreSQL was down: {statuses}"
        started_at = time.monotonic()
        self.engine.docker("start", pg["Id"])

        def ready() -> bool:
            answers = [self.api_or_none("GET", "/readyz", port=p) for p in PORTS]
            return all(a and a[0] == 200 for a in answers)

        wait_for(ready, timeout=120, what="both schedulers ready again")
        after = self.submit({"command": "echo after"})["id"]
        recovery = time.monotonic() - started_at
        ended = self.wait_tasks_end([*before, *accepted, after], timeout=180)
        assert all(t["status"] == "succeeded" for t in ended.values()), ended
        self.figures.append(("postgres", f"down 15 s: {statuses[503]} answers 503, "
                                         f"{len(accepted)} accepted; ready {recovery:.0f} s "
                                         f"after its start; all {len(ended)} tasks succeeded"))

    def daemon(self) -> None:
        if not self.engine.owned:
            self.figures.append(("daemon", "skipped: the engine in use was not started here"))
            return
        self.engine.stop_daemon()
        started_at = time.monotonic()
        self.engine.start_daemon()
        wait_for(self.healthy, timeout=300, what="every service healthy after the restart")
        wait_for(self.cluster_alive, timeout=120, what="2+2+3 alive after the restart")
        task = self.submit({"command": "echo back"})
        (done,) = self.wait_tasks_end([task["id"]], timeout=60).values()
        assert done["status"] == "succeeded", done
        self.figures.append(("daemon", f"dockerd restarted: whole cluster healthy and running "
                                       f"tasks {time.monotonic() - started_at:.0f} s later"))

    def down(self) -> None:
        self.make("down", "ARGS=-v", timeout=300)
        left = self.containers()
        volumes = self.engine.docker("volume", "ls", "-q", "--filter",
                                     f"label=com.docker.compose.project={PROJECT}").stdout
        networks = self.engine.docker("network", "ls", "-q", "--filter",
                                      f"label=com.docker.compose.project={PROJECT}").stdout
        assert not left and not volumes.split() and not networks.split(), (left, volumes,
                                                                             networks)
        self.figures.append(("down", "`make down ARGS=-v`: no container, network or "
                                     "volume left"))


def main() -> int:
    started = time.monotonic()
    budget = int(os.environ.get("COMPOSE_TEST_TIMEOUT", "2400"))

    def out_of_time(*_: object) -> None:
        raise TimeoutError(f"the compose test ran out of its {budget} s")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(budget)
    env_file = ROOT / ".env"
    had_env_file = env_file.exists()
    engine = Engine()
    scenario = Scenario(engine)
    failed = True
    try:
        log(f"engine: {engine.start()}")
        scenario = Scenario(engine)
        log(engine.base_images(["python:3.11-slim", "postgres:16-alpine"]))
        steps = [scenario.up, scenario.nodes, scenario.seed, scenario.kill, scenario.crash,
                 scenario.zombies_step, scenario.isolation, scenario.postgres,
                 scenario.daemon, scenario.down]
        chosen = os.environ.get("COMPOSE_TEST_STEPS", ",".join(
            step.__name__.removesuffix("_step") for step in steps))  # e.g. up,zombies,down
        for step in steps:
            name = step.__name__.removesuffix("_step")
            if name not in chosen.split(","):
                continue
            log(f"{name} ...")
            step()
            log(f"{name}: {scenario.figures[-1][1]}")
        failed = False
    except BaseException as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        if engine.owned:
            print(engine.daemon_log(), flush=True)
        raise
    finally:
        signal.alarm(0)
        if failed and engine.answers():
            for c in scenario.containers():
                logs = engine.docker("logs", "--tail", "30", c["Id"], check=False)
                print(f"--- {c['Name']} ({c['State']['Status']})\n{logs.stdout}{logs.stderr}")
            scenario.compose("down", "-v", "--timeout", "5", timeout=300)
        engine.close()
        if not had_env_file:
            env_file.unlink(missing_ok=True)
        for name, figure in scenario.figures:
            print(f"  {name:<9} {figure}")
        print(f"compose test {'FAILED' if failed else 'passed'} in "
              f"{time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
