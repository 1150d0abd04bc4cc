"""Integration tests for chronocore.pgcluster against the machine's PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chronocore.pgcluster import (
    FAST_TEST_SETTINGS,
    LocalCluster,
    PostgresError,
    find_bindir,
)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not pytest's tmp_path: under root it sits in a 0700 directory that the
    # unprivileged server user cannot enter.
    path = Path(tempfile.mkdtemp(prefix="chronosync-pgtest-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def datadir(base: Path) -> Path:
    base.chmod(0o755)  # mkdtemp makes it 0700; the server user must traverse it
    return base / "pgdata"


def test_find_bindir_has_server_binaries() -> None:
    bindir = find_bindir()
    for name in ("initdb", "pg_ctl", "postgres"):
        assert os.access(bindir / name, os.X_OK), name


def test_never_started_stop_is_noop(datadir: Path) -> None:
    LocalCluster(datadir=datadir).stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")
def test_untraversable_parent_is_a_clear_error(base: Path) -> None:
    with pytest.raises(PostgresError, match="not traversable"):
        LocalCluster(datadir=base / "pgdata").start()


def test_start_query_stop(datadir: Path) -> None:
    cluster = LocalCluster(datadir=datadir, settings=FAST_TEST_SETTINGS)
    with cluster:
        assert (datadir / "PG_VERSION").exists()
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            row = conn.execute("SELECT current_setting('fsync'), "
                               "current_setting('listen_addresses')").fetchone()
            assert row == (FAST_TEST_SETTINGS["fsync"], "127.0.0.1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(cluster.dsn(), connect_timeout=5)
    cluster.stop()
    cluster.stop()


def test_restart_reuses_datadir_and_port(datadir: Path) -> None:
    cluster = LocalCluster(datadir=datadir, settings={"fsync": "off"})
    cluster.start()
    try:
        port = cluster.port
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE kept")
    finally:
        cluster.stop()
    cluster.start()
    try:
        assert cluster.port == port
        with psycopg.connect(cluster.dsn("kept")) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kept",)
    finally:
        cluster.stop()


def test_connections_need_the_generated_password(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """127.0.0.1 is open to every local user: without the password none gets in."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    with LocalCluster(datadir=datadir, settings=FAST_TEST_SETTINGS) as cluster:
        with psycopg.connect(cluster.dsn()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
        bare = f"host=127.0.0.1 port={cluster.port} dbname=postgres passfile=/dev/null"
        for who in ("postgres", "nobody", "root"):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(f"{bare} user={who}", connect_timeout=5)
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"{bare} user=postgres password=wrong", connect_timeout=5)
        kept = datadir / "chronosync-password"
        assert kept.stat().st_mode & 0o077 == 0 and datadir.stat().st_mode & 0o077 == 0
        assert LocalCluster(datadir=datadir).password == cluster.password
