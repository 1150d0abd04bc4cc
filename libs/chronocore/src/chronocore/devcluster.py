"""Run a whole local cluster as real processes: ``chronosync dev`` and the integration
tests both use it.

Each node is a ``python -m chronosync_<kind>`` child in its own process group; its output
lines are prefixed with the node's name (to a stream, or to a log file per node). ``stop``
sends SIGTERM and, after a grace period, SIGKILL, so nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

SERVICE_MODULES = {
    "scheduler": "chronosync_scheduler",
    "coordinator": "chronosync_coordinator",
    "worker": "chronosync_worker",
}
STOP_GRACE_S = 15.0


class NodeProcess:
    """One service process, started at construction."""

    def __init__(self, *, kind: str, name: str, env: dict[str, str],
                 out: IO[str] | None, log_path: Path | None,
                 wrapper: list[str] | None = None) -> None:
        self.kind = kind
        self.name = name
        self.log_path = log_path
        sink = open(log_path, "ab") if log_path is not None else subprocess.PIPE  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*(wrapper or []), sys.executable, "-u", "-m", SERVICE_MODULES[kind]],
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
            out.write(f"[{self.name}] {raw.decode(errors='replace')}")
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
