"""The spawn gate (``chronocore.runner.gated``): the child itself refuses to start a
command past its spawn deadline, in every shape a worker spawns commands (beside the
worker, as another user through setpriv, in the sandbox), and a gated command runs as
the plain one would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from harness import Cluster, as_unprivileged_user, unprivileged_user

from chronocore import runner
from chronocore.runner import SPAWN_TRIES, CommandRun, gate_fault

# Run in a process of its own (as the test's user for the sandbox): a command past its
# deadline, then one whose deadline the guard renews on its second call, as the
# worker's does once the database confirms the claim. Prints what happened as JSON.
TRIAL = r"""
import json, os, sys, time
from chronocore.runner import CommandRun, RunAs, Sandbox, gate_fault

shape, marker = sys.argv[1], sys.argv[2]
extra = {}
if shape == "run_as":
    extra["run_as"] = RunAs.lookup(sys.argv[3])
elif shape == "sandboxed":
    extra["sandbox"] = Sandbox.lookup(())

def trial(renew_on_call):
    deadline = [time.monotonic() - 0.5]
    calls = []
    def guard():
        calls.append(time.monotonic())
        if len(calls) == renew_on_call:
            deadline[0] = time.monotonic() + 30
    run = CommandRun(command=f"echo ran >> {marker}; echo done", env=dict(os.environ),
                     cwd="/", timeout_s=30, kill_grace_s=1, guard=guard,
                     spawn_by=lambda: deadline[0], **extra)
    result = run.run()
    try:
        with open(marker) as f:
            lines = f.read().split()
        os.unlink(marker)
    except FileNotFoundError:
        lines = []
    return {"error": result.error, "output": result.output, "ran": lines,
            "guard_calls": len(calls)}

print(json.dumps({"past": trial(renew_on_call=0), "renewed": trial(renew_on_call=2),
                  "fault": gate_fault(**extra)}))
"""


def _run_trial(shape: str) -> dict:
    base = Path(tempfile.mkdtemp(prefix="chronosync-gate-"))
    base.chmod(0o777)
    marker = base / "ran"
    prefix: list[str] = []
    args = [shape, str(marker)]
    if shape == "sandboxed":
        if os.geteuid() != 0:
            pytest.skip("needs root to run the trial as a user of the test's own")
        prefix = as_unprivileged_user()
    elif shape == "run_as":
        if os.geteuid() != 0:
            pytest.skip("needs root to run commands as another user")
        unprivileged_user()
        args.append("chronosync-test-node")
    done = subprocess.run([*prefix, sys.executable, "-c", TRIAL, *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("shape", ["beside", "run_as", "sandboxed"])
def test_a_command_past_its_spawn_deadline_never_runs(shape: str) -> None:
    result = _run_trial(shape)
    past, renewed = result["past"], result["renewed"]
    # Past its deadline every time: spawned SPAWN_TRIES times, run never.
    assert past["ran"] == [], past
    assert past["error"] == "spawn: claim not confirmed in time", past
    assert past["guard_calls"] >= SPAWN_TRIES, past
    # The guard renews the deadline on its second call (the first gated spawn's
    # after-spawn check): the next spawn runs the command, once.
    assert renewed["ran"] == ["ran"], renewed
    assert (renewed["error"], renewed["output"]) == (None, "done\n"), renewed
    # The worker's own trial at its start agrees: the gate works in this shape.
    assert result["fault"] is None


@pytest.mark.parametrize(("gate", "found"), [
    (": {deadline}; exec </dev/null; ", "past time to spawn ran"),  # never shuts
    ("echo >&0; exit 125; : {deadline}; ", "with time to spawn did not run"),  # never opens
])
def test_a_gate_that_cannot_tell_the_time_is_found_at_the_worker_s_start(
    monkeypatch: pytest.MonkeyPatch, gate: str, found: str
) -> None:
    """As when /proc/uptime is not the host's boot time (lxcfs in some containers): the
    worker's trial at its start says so, and it spawns without the gate."""
    monkeypatch.setattr(runner, "_GATE", gate)
    fault = gate_fault()
    assert fault is not None and found in fault, fault


@pytest.mark.parametrize("command", [
    "echo out; echo err >&2; exit 3",
    "echo a; if",  # a syntax error: reported on line 1, nothing run
    'read -r line; echo "[$line] $?"; readlink /proc/$$/fd/0',  # stdin is /dev/null
    'echo "[$_chronosync_up]"; ls /proc/self/fd | wc -l',  # nothing of the gate left
    "kill -TERM $$",
])
def test_a_gated_command_runs_as_the_plain_one_would(command: str) -> None:
    def run(gated: bool) -> tuple[object, ...]:
        far = (lambda: time.monotonic() + 60) if gated else None
        result = CommandRun(command=command, env={"PATH": os.environ["PATH"]}, cwd="/",
                            timeout_s=30, kill_grace_s=1, spawn_by=far).run()
        return result.succeeded, result.exit_code, result.error, result.output

    assert run(gated=True) == run(gated=False)


def test_a_worker_s_commands_come_through_the_gate(cluster: Cluster) -> None:
    """What the worker spawns is the gated shell (its script is the shell's argument).
    The frozen-worker test in test_failover shows the end to end; this one cannot be
    won by the race that test's worker has with its own fence (the SIGKILL it sends
    right after a late spawn may land before an ungated command writes anything)."""
    cluster.start("scheduler")
    cluster.start("coordinator")
    cluster.start("worker")
    cluster.wait_ready(coordinators=1, workers=1)
    _, body = cluster.http("POST", "/schedule",
                           {"command": "tr '\\0' ' ' < /proc/$$/cmdline"})
    task = cluster.wait_task(body["id"], ("succeeded", "failed"))
    assert task["status"] == "succeeded", task
    assert "_chronosync_up" in task["output"] and "/proc/uptime" in task["output"], task
