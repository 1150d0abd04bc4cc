"""The ``cluster`` fixture: a Cluster (see harness.py) torn down after each test; and
``repo``, a TaskRepository on the test's own database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import browser  # noqa: F401 - the dashboard tests' fixture
from harness import THROUGH_PGBOUNCER, Cluster, pgbouncer, running_cluster

from chronocore.db import open_pool
from chronocore.repository import TaskRepository


@pytest.fixture
def cluster(dsn: str, tmp_path: Path) -> Iterator[Cluster]:
    """A cluster with no nodes yet; the test starts what it needs. With
    CHRONOSYNC_TEST_THROUGH_PGBOUNCER=1 its nodes connect through PgBouncer in transaction
    mode (CHRONOSYNC_DSN) and directly for what needs a session (CHRONOSYNC_SESSION_DSN);
    the test's own queries stay direct."""
    if not THROUGH_PGBOUNCER:
        with running_cluster(dsn, tmp_path) as running:
            yield running
        return
    with pgbouncer(dsn) as pooler, running_cluster(dsn, tmp_path,
                                                   node_dsn=pooler.dsn) as running:
        yield running


@pytest.fixture
def repo(dsn: str) -> Iterator[TaskRepository]:
    pool = open_pool(dsn, size=4, name="test-repo")
    try:
        yield TaskRepository(pool)
    finally:
        pool.close()
