"""Versioned schema migrations: ordered ``migrations/NNNN_name.sql`` files, each applied
once, recorded in ``schema_migrations`` (its statements are named in queries.sql).

All of them run in one transaction that first takes a transaction-level advisory lock, so
any number of nodes may start (and migrate) at once: the first applies what is missing,
the others wait on the lock, then find nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from chronocore.queries import QUERIES

# An arbitrary constant shared by every ChronoSync node: "the migration lock".
MIGRATION_LOCK_ID = 0x0C4_0505_0001

_FILE = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("chronocore").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def apply_migrations(conninfo: str) -> list[int]:
    """Bring the schema up to date; returns the versions this call applied."""
    applied_now = []
    with psycopg.connect(conninfo) as conn, conn.transaction():
        conn.execute(QUERIES["lock_migrations"], {"lock_id": MIGRATION_LOCK_ID})
        conn.execute(QUERIES["create_schema_migrations"])
        done = {row[0] for row in conn.execute(QUERIES["applied_migrations"])}
        for migration in available():
            if migration.version in done:
                continue
            conn.execute(migration.sql)
            conn.execute(QUERIES["record_migration"],
                         {"version": migration.version, "name": migration.name})
            applied_now.append(migration.version)
    return applied_now
