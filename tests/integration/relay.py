"""A TCP relay a test puts between one node and PostgreSQL, to cut that node alone off.

``cut()`` makes a partition: nothing more is forwarded either way and new connections
are held unanswered, so the node's statements hang as on a dead link (the relay's kernel
still acknowledges what it sends, so no TCP timeout ends them). ``cut(reset=True)``
makes an outage the node notices at once: every relayed connection is reset and new
ones are reset on arrival. ``heal()`` forwards again (after a partition, what was held
flows on, as after a healed link).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
from types import TracebackType

from psycopg.conninfo import conninfo_to_dict, make_conninfo

# The forwarding thread looks at the relay's state at least this often.
POLL_S = 0.05
CHUNK = 64 * 1024


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (no FIN): the peer's next read or write fails at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Relay:
    def __init__(self, dsn: str) -> None:
        """A relay to the server ``dsn`` names; ``dsn`` (the property) goes through it."""
        params = conninfo_to_dict(dsn)
        self._upstream = (params.get("host") or "127.0.0.1", int(params.get("port") or 5432))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.dsn = make_conninfo(dsn, host="127.0.0.1", port=str(self.port))
        self._peers: dict[socket.socket, socket.socket] = {}
        self._held: list[socket.socket] = []  # accepted during a partition, not yet relayed
        self._lock = threading.Lock()
        self._forwarding = True
        self._resetting = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def cut(self, *, reset: bool = False) -> None:
        with self._lock:
            self._forwarding = False
            self._resetting = reset
            if reset:
                for sock in [*self._peers, *self._held]:
                    _reset(sock)
                self._peers.clear()
                self._held.clear()

    def heal(self) -> None:
        with self._lock:
            self._forwarding = True
            self._resetting = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._thread.join(timeout=5)
        with self._lock:
            for sock in [*self._peers, *self._held, self._listener]:
                sock.close()
            self._peers.clear()
            self._held.clear()

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        self._peers[client] = upstream
        self._peers[upstream] = client

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                if self._forwarding:
                    for client in self._held:
                        self._connect(client)
                    self._held.clear()
                reading = [self._listener, *(self._peers if self._forwarding else ())]
            try:
                ready, _, _ = select.select(reading, [], [], POLL_S)
            except (OSError, ValueError):
                continue  # a socket was reset by cut() meanwhile
            with self._lock:
                for sock in ready:
                    if sock is self._listener:
                        client, _ = self._listener.accept()
                        if self._resetting:
                            _reset(client)
                        elif self._forwarding:
                            self._connect(client)
                        else:
                            self._held.append(client)
                        continue
                    peer = self._peers.get(sock)
                    if peer is None or not self._forwarding:
                        continue  # closed, or cut since the select
                    try:
                        data = sock.recv(CHUNK)
                        if data:
                            peer.sendall(data)
                            continue
                    except OSError:
                        pass
                    for end in (sock, peer):  # one side closed: close the other
                        self._peers.pop(end, None)
                        end.close()
