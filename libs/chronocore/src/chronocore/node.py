"""What every ChronoSync process does the same way: logging with its node id, waiting for
PostgreSQL (with backoff) and migrating it, and turning SIGTERM/SIGINT into a stop event.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

import psycopg

from chronocore.migrate import apply_migrations

log = logging.getLogger(__name__)

# Reconnect backoff while the database is unreachable: quick at first, then at most
# every few seconds, so a restarted database is found again promptly.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 3.0


def setup_logging(node_id: str) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s",
    )


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def migrate_when_reachable(dsn: str, stop: threading.Event) -> bool:
    """Apply migrations, retrying until the database answers; False if stopped first."""
    delay = RECONNECT_FIRST_S
    while not stop.is_set():
        try:
            applied = apply_migrations(dsn)
        except psycopg.OperationalError as exc:
            log.warning("database unreachable (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        if applied:
            log.info("applied migrations %s", applied)
        return True
    return False
