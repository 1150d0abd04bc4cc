"""Run a whole local cluster as real processes: ``chronosync dev`` and the integration
tests both use it.

Each node is its service's console script (``chronosync-worker``: the command the image
runs), started through its entry point in a child of its own process group; its output
lines are prefixed with the node's name (to a stream, or to a log file per node).
``stop`` sends SIGTERM and, after a grace period, SIGKILL, so nothing is left behind.

``Supervisor`` is what makes ``chronosync dev`` behave like compose's ``restart:
unless-stopped``: a node that dies is reported in one line and started again after a
short backoff, so a newcomer can kill -9 a node and watch the cluster carry on; a node
that keeps dying right after its start (a taken port, a bad setting) is a crash loop, and
ends the cluster with that node's own last words.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

# Each kind of node by the console script its package declares: the name Docker and
# Kubernetes run it by (tests/unit/test_deploy.py holds those to the packages).
SERVICES = {
    "scheduler": "chronosync-scheduler",
    "coordinator": "chronosync-coordinator",
    "worker": "chronosync-worker",
}
STOP_GRACE_S = 15.0
# Lines of a node's own output kept to say why it died (from a stream, not a log file).
LAST_WORDS = 5


# ``python -c`` code that runs the console script named in argv[1] through its entry point:
# found in the installed packages' metadata wherever pip put (or did not put) the script
# file, and run by whichever Python starts it (the tests swap in another user's).
RUN_ENTRY_POINT = (
    "import sys; from importlib.metadata import entry_points; "
    "[script] = entry_points(group='console_scripts', name=sys.argv[1]); "
    "sys.argv[:2] = [script.name]; sys.exit(script.load()())"
)


def service_argv(kind: str) -> list[str]:
    """The command line of a ``kind`` node: its service's entry point in this Python,
    unbuffered so that its lines arrive as they are written."""
    return [sys.executable, "-u", "-c", RUN_ENTRY_POINT, SERVICES[kind]]


class NodeProcess:
    """One service process, started at construction."""

    def __init__(self, *, kind: str, name: str, env: dict[str, str],
                 out: IO[str] | None, log_path: Path | None,
                 wrapper: list[str] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.env = env
        self.wrapper = wrapper
        self.log_path = log_path
        self.started = time.monotonic()
        self.last_lines: collections.deque[str] = collections.deque(maxlen=LAST_WORDS)
        sink = open(log_path, "ab") if log_path is not None else subprocess.PIPE  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*(wrapper or []), *service_argv(kind)],
            env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if log_path is not None:
            sink.close()  # the child holds its own copy
        else:
            threading.Thread(target=self._prefix, args=(out or sys.stdout,), daemon=True,
                             name=f"log-{name}").start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def last_words(self) -> str:
        """The node's last line of output, to say why it died."""
        lines = list(self.last_lines)
        if self.log_path is not None and self.log_path.exists():
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines()
                     if line.strip()]
        return lines[-1] if lines else "(it printed nothing)"

    def how_it_ended(self) -> str:
        """'killed by SIGKILL', 'exited with code 2' (call once it has ended)."""
        code = self.proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def signal(self, sig: int) -> None:
        """Signal the node's process group: the node and any wrapper (faketime forks and
        does not pass signals on). Its commands and reaper have sessions of their own."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def _prefix(self, out: IO[str]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace")
            if line.strip():
                self.last_lines.append(line.rstrip())
            out.write(f"[{self.name}] {line}")
            out.flush()


class ProcessCluster:
    """Nodes started on demand against one database; ``stop`` ends them all."""

    def __init__(self, *, dsn: str, env: dict[str, str] | None = None,
                 log_dir: Path | None = None, out: IO[str] | None = None) -> None:
        self._env = {**os.environ, **(env or {}), "CHRONOSYNC_DSN": dsn}
        self._log_dir = log_dir
        self._out = out
        self.nodes: list[NodeProcess] = []
        self._counts: dict[str, int] = {}

    def start(self, kind: str, *, env: dict[str, str] | None = None,
              wrapper: list[str] | None = None) -> NodeProcess:
        """Start one node; ``wrapper`` prefixes its command line (e.g. ``faketime``)."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        name = f"{kind}-{self._counts[kind]}"
        log_path = None if self._log_dir is None else self._log_dir / f"{name}.log"
        node = NodeProcess(kind=kind, name=name, env={**self._env, **(env or {})},
                           out=self._out, log_path=log_path, wrapper=wrapper)
        self.nodes.append(node)
        return node

    def restart(self, node: NodeProcess) -> NodeProcess:
        """Start a dead node again under its name, with its environment."""
        again = NodeProcess(kind=node.kind, name=node.name, env=node.env, out=self._out,
                            log_path=node.log_path, wrapper=node.wrapper)
        self.nodes[self.nodes.index(node)] = again
        return again

    def stop(self, *, grace_s: float = STOP_GRACE_S) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)  # a paused node cannot stop
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for node in self.nodes:
            try:
                node.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for node in self.nodes:
            if node.alive():
                try:
                    os.killpg(node.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                node.proc.wait()

    def logs(self) -> str:
        """Every node's log file, for a failing test's report."""
        if self._log_dir is None:
            return ""
        parts = []
        for node in self.nodes:
            if node.log_path is not None and node.log_path.exists():
                text = node.log_path.read_text(errors="replace")
                parts.append(f"===== {node.name} =====\n{text[-20000:]}")
        return "\n".join(parts)


class CrashLoop(Exception):
    """A node died right after its start too many times in a row."""


class Supervisor:
    """Keeps a cluster's nodes running: call ``check`` often from one thread."""

    # A node that dies within this of its start has not really come up...
    EARLY_DEATH_S = 10.0
    # ...and after this many such deaths in a row it is crash-looping.
    CRASH_LOOP_AFTER = 3
    # Waits before a restart: doubling, so a flapping node does not spin.
    BACKOFF_S = (1.0, 2.0, 4.0, 8.0)

    def __init__(self, cluster: ProcessCluster, *,
                 say: Callable[[str], None] = print) -> None:
        self._cluster = cluster
        self._say = say
        self.restarts = 0
        self._early_deaths: dict[str, int] = {}
        self._due: dict[str, tuple[float, NodeProcess]] = {}

    def check(self) -> None:
        """Report nodes that died, restart those whose backoff is over; raise CrashLoop
        with the node's own last words when one keeps dying at start."""
        now = time.monotonic()
        for node in list(self._cluster.nodes):
            if node.alive() or node.name in self._due:
                continue
            # A kill from outside (a newcomer's kill -9) says nothing about the node.
            killed = node.proc.wait() in (-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT)
            early = now - node.started < self.EARLY_DEATH_S and not killed
            deaths = self._early_deaths[node.name] = (
                self._early_deaths.get(node.name, 0) + 1 if early else 0)
            how = node.how_it_ended()
            if deaths >= self.CRASH_LOOP_AFTER:
                raise CrashLoop(f"{node.name} keeps dying at start ({how}, {deaths} times "
                                f"in a row): {node.last_words()}")
            wait = self.BACKOFF_S[min(max(deaths - 1, 0), len(self.BACKOFF_S) - 1)]
            self._say(f"dev: {node.name} (pid {node.pid}) {how}; restarting it in "
                      f"{wait:.0f} s")
            self._due[node.name] = (now + wait, node)
        for name, (at, node) in list(self._due.items()):
            if now >= at:
                del self._due[name]
                again = self._cluster.restart(node)
                self.restarts += 1
                self._say(f"dev: {name} restarted (pid {again.pid})")
