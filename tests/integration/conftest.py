"""The ``cluster`` fixture: a Cluster (see harness.py) torn down after each test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster


@pytest.fixture
def cluster(dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with no nodes yet; the test starts what it needs."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    running = Cluster(dsn=dsn, log_dir=log_dir)
    yield running
    running.stop()
    print(running.processes.logs())  # shown by pytest when the test failed
