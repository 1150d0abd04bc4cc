"""Every node's sessions are bounded by the server (CHRONOSYNC_*_TIMEOUT_S): a stuck
client, frozen or cut off, holds nothing up for long, and a request waiting behind one
answers instead of hanging."""

from __future__ import annotations

import psycopg
from harness import Cluster, bounded_request, wait_for
from psycopg import sql

from chronocore.db import SessionTimeouts, open_pool


def test_a_pooled_session_carries_the_timeouts_after_the_dsn_own_options(dsn: str) -> None:
    pool = open_pool(f"{dsn} options='-c application_name=mine'", size=1, name="t",
                     timeouts=SessionTimeouts(lock_s=1.5, idle_in_transaction_s=7,
                                              statement_s=0))
    try:
        with pool.connection(timeout=30) as conn:
            shown = {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name)))
                     .fetchone()[name]
                     for name in ("lock_timeout", "idle_in_transaction_session_timeout",
                                  "statement_timeout", "application_name")}
    finally:
        pool.close()
    assert shown == {"lock_timeout": "1500ms", "idle_in_transaction_session_timeout": "7s",
                     "statement_timeout": "0", "application_name": "mine"}


def test_an_edit_behind_a_stuck_lock_holder_answers_503_instead_of_hanging(
    cluster: Cluster,
) -> None:
    cluster.start("scheduler", CHRONOSYNC_LOCK_TIMEOUT_S="1")
    wait_for(lambda: bounded_request(cluster.url, "GET", "/readyz", timeout=2).status == 200,
             timeout=30, what="the scheduler to be ready")
    status, job = cluster.http("POST", "/schedule", {"command": "true", "cron": "@daily"})
    assert status == 201, job
    # A session of some other program takes the job's row lock and sits on it.
    with psycopg.connect(cluster.dsn) as stuck:
        stuck.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job["id"],))
        edit = bounded_request(cluster.url, "PATCH", f"/jobs/{job['id']}",
                               {"command": "echo edited"}, timeout=20)
        stuck.rollback()
    assert edit.status == 503, edit
    assert cluster.http("PATCH", f"/jobs/{job['id']}", {"command": "echo edited"})[0] == 200
