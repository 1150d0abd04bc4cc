"""The ``cluster`` fixture: a Cluster (see harness.py) torn down after each test; and
``repo``, a TaskRepository on the test's own database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Cluster

from chronocore.db import open_pool
from chronocore.repository import TaskRepository


@pytest.fixture
def cluster(dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with no nodes yet; the test starts what it needs."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    running = Cluster(dsn=dsn, log_dir=log_dir)
    yield running
    running.stop()
    print(running.processes.logs())  # shown by pytest when the test failed


@pytest.fixture
def repo(dsn: str) -> Iterator[TaskRepository]:
    pool = open_pool(dsn, size=4, name="test-repo")
    try:
        yield TaskRepository(pool)
    finally:
        pool.close()
