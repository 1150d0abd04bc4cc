"""Schema migrations: safe when many nodes start at once, idempotent, numbered in order."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import psycopg
from harness import query, wait_for

from chronocore.migrate import MIGRATION_LOCK_ID, apply_migrations, available

CHRONOSYNC = Path(sys.executable).parent / "chronosync"
MIGRATORS = 5
# The documented naming rule (chronocore.migrate): migrations/NNNN_name.sql.
MIGRATION_FILE = re.compile(r"^\d{4}_\w+\.sql$")


def schema_snapshot(dsn: str) -> list[tuple[str, str]]:
    """Every relation, function and trigger of the public schema."""
    rows = query(
        dsn,
        "SELECT c.relkind::text AS kind, c.relname AS name FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
        " UNION ALL SELECT 'function', p.oid::regprocedure::text FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        " UNION ALL SELECT 'trigger', tgname FROM pg_trigger WHERE NOT tgisinternal",
    )
    return sorted((r["kind"], r["name"]) for r in rows)


def test_five_nodes_migrating_an_empty_database_at_once_all_succeed_and_apply_each_once(
    make_database: Callable[..., str],
) -> None:
    dsn = make_database(migrated=False)
    assert CHRONOSYNC.exists(), f"the console script is missing: {CHRONOSYNC}"
    env = {**os.environ, "CHRONOSYNC_DSN": dsn}
    # Hold the migration lock until all five wait on it, so they truly start together.
    gate = psycopg.connect(dsn, autocommit=True)
    gate.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    procs = [
        subprocess.Popen([str(CHRONOSYNC), "migrate"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(MIGRATORS)
    ]
    results = []
    try:
        def all_waiting() -> bool:
            exited = [p.returncode for p in procs if p.poll() is not None]
            assert not exited, f"a migrator exited while the lock was held: {exited}"
            rows = query(dsn, "SELECT count(*) AS n FROM pg_locks"
                              " WHERE locktype = 'advisory' AND NOT granted AND database ="
                              " (SELECT oid FROM pg_database WHERE datname = current_database())")
            return rows[0]["n"] == MIGRATORS

        try:
            wait_for(all_waiting, timeout=30, what=f"{MIGRATORS} migrators to queue on the lock")
        finally:
            gate.close()
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            results.append((proc.returncode, out.decode(), err.decode()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    failed = [r for r in results if r[0] != 0]
    assert not failed, f"{len(failed)} of {MIGRATORS} migrators failed: {failed}"

    rows = query(dsn, "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
    counts = {r["version"]: r["n"] for r in rows}
    assert counts == {m.version: 1 for m in available()}

    tables = {
        r["relname"]
        for r in query(
            dsn,
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'",
        )
    }
    assert {"tasks", "task_attempts", "nodes", "schema_migrations"} <= tables
    functions = query(
        dsn,
        "SELECT p.oid::regprocedure::text AS signature FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace"
        " WHERE n.nspname = 'public' AND p.proname = 'task_status'",
    )
    assert [f["signature"] for f in functions] == [
        "task_status(timestamp with time zone,timestamp with time zone,"
        "timestamp with time zone,timestamp with time zone,timestamp with time zone,integer)"
    ]


def test_migrating_twice_is_a_no_op(make_database: Callable[..., str]) -> None:
    dsn = make_database(migrated=False)
    assert apply_migrations(dsn) == [m.version for m in available()]
    before = schema_snapshot(dsn)
    recorded = query(dsn, "SELECT version, name, applied_at FROM schema_migrations")

    assert apply_migrations(dsn) == []
    assert schema_snapshot(dsn) == before
    assert query(dsn, "SELECT version, name, applied_at FROM schema_migrations") == recorded


def test_migration_files_are_numbered_from_0001_without_gaps() -> None:
    directory = resources.files("chronocore").joinpath("migrations")
    sql_files = sorted(entry.name for entry in directory.iterdir()
                       if entry.name.endswith(".sql"))
    misnamed = [name for name in sql_files if not MIGRATION_FILE.match(name)]
    assert not misnamed, f"ignored by the migrator (want NNNN_name.sql): {misnamed}"
    versions = [m.version for m in available()]
    assert versions, "no migrations found"
    assert versions == list(range(1, len(versions) + 1)), (
        f"migration versions must run 1, 2, 3... without gaps: {versions}"
    )
