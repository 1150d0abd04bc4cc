"""`make test` finds a PostgreSQL whatever the machine: a Docker engine that answers but
cannot pull an image (an air-gapped host, a registry outage) makes the suite fall back to
the local PostgreSQL binaries, saying so, instead of failing every database test."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class EngineThatCannotPull(BaseHTTPRequestHandler):
    """Answers the Docker API's ping and version; every other call fails as a pull from
    an unreachable registry does."""

    def do_GET(self) -> None:
        if self.path.endswith("/_ping"):
            self._answer(200, b"OK", "text/plain")
        elif self.path.endswith("/version"):
            self._answer(200, json.dumps({"ApiVersion": "1.43", "Version": "24.0.0",
                                          "Os": "linux"}).encode(), "application/json")
        else:
            self._refuse()

    def do_POST(self) -> None:
        self._refuse()

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self._answer(500, json.dumps({"message": "registry unreachable"}).encode(),
                     "application/json")

    def _answer(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):  # type: ignore[no-untyped-def]
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a client address


def test_an_engine_that_cannot_pull_falls_back_to_local_binaries(tmp_path: Path) -> None:
    socket_path = tmp_path / "docker.sock"
    server = UnixHTTPServer(str(socket_path), EngineThatCannotPull)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if k != "CHRONOSYNC_TEST_DSN"}
    env.update(DOCKER_HOST=f"unix://{socket_path}", TESTCONTAINERS_RYUK_DISABLED="true")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "tests/integration/test_status.py::"
             "test_task_status_function_follows_the_precedence_for_all_64_combinations"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.shutdown()
        server.server_close()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "1 passed" in run.stdout
    assert "a Docker engine answers but could not start PostgreSQL" in run.stdout
    assert "using the local PostgreSQL binaries" in run.stdout
