"""What every ChronoSync process does the same way: logging with its node id, waiting for
PostgreSQL (with backoff) and migrating it, and turning SIGTERM/SIGINT into a stop event.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime

import psycopg

from chronocore.config import Config
from chronocore.migrate import apply_migrations

log = logging.getLogger(__name__)

# Reconnect backoff while the database is unreachable: quick at first, then at most
# every few seconds, so a restarted database is found again promptly.
RECONNECT_FIRST_S = 0.2
RECONNECT_MAX_S = 3.0


class JsonLines(logging.Formatter):
    """One JSON object a line: time, level, node, logger, message, and task_id when the
    line is about a task (``extra={"task_id": ...}``)."""

    def __init__(self, node_id: str) -> None:
        super().__init__()
        self._node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "node": self._node_id,
            "logger": record.name,
            "message": record.getMessage(),
        }
        task_id = getattr(record, "task_id", None)
        if task_id is not None:
            line["task_id"] = task_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(node_id: str) -> None:
    """Readable lines by default; JSON lines with CHRONOSYNC_LOG_FORMAT=json. Either way
    every line names the node, and lines about a task name the task."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("CHRONOSYNC_LOG_FORMAT", "").lower() == "json":
        handler.setFormatter(JsonLines(node_id))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {node_id} %(name)s: %(message)s"))
    level = os.environ.get("CHRONOSYNC_LOG_LEVEL", "info").upper()
    logging.basicConfig(level=level, handlers=[handler])


def stop_event_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (call from the main thread)."""
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def migrate_when_reachable(config: Config, stop: threading.Event) -> bool:
    """Apply migrations, retrying until the database answers; False if stopped first.
    They take a session-wide view of the schema, so they use the direct DSN."""
    if config.pooled:
        log.info("CHRONOSYNC_SESSION_DSN is set, so CHRONOSYNC_DSN is taken to be a "
                 "transaction pooler (no prepared statements on it); what needs a session "
                 "(migrations, a coordinator's LISTEN) uses CHRONOSYNC_SESSION_DSN")
    delay = RECONNECT_FIRST_S
    while not stop.is_set():
        try:
            applied = apply_migrations(config.direct_dsn)
        except psycopg.OperationalError as exc:
            log.warning("database unreachable (%s); retrying in %.1fs", exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            continue
        if applied:
            log.info("applied migrations %s", applied)
        return True
    return False
