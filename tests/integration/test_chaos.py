"""The chaos scenario (tests/chaos/chaos.py) for 60 s inside the normal suite.

It starts its own PostgreSQL (or a fresh database on CHRONOSYNC_TEST_DSN) and its own
nodes, with the SPEC's default liveness timings; its seed is printed first, so a failure
here is replayed with ``make chaos-test CHAOS_SEED=N CHAOS_DURATION=60``. Select it alone
with ``pytest -m slow -k chaos``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCENARIO = Path(__file__).resolve().parents[1] / "chaos" / "chaos.py"
DURATION_S = 60
# Start-up, the 60 s of chaos, settling (TTL, sweep, backoff) and a clean stop take
# about 90 s; the margin covers a loaded machine.
TIMEOUT_S = 150
# On a timeout the scenario gets SIGTERM and this long to stop its nodes and PostgreSQL.
CLEANUP_S = 40


def test_chaos_keeps_every_guarantee_for_60_seconds() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCENARIO), "--duration", str(DURATION_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=CLEANUP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        print(output)
        pytest.fail(f"the chaos scenario ran past {TIMEOUT_S}s")
    print(output)  # shown by pytest when the test failed
    assert proc.returncode == 0, output[-8000:]
