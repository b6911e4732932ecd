"""Listeners that prove a refusal: nothing may connect to them.

A :class:`RecordingListener` binds a loopback address other than 127.0.0.1 (127.0.0.2,
127.0.0.3: the "other hosts" of the security tests), accepts every connection, records the
peer and the first bytes it sent, and closes it. A refused URL that names such a host, or
redirects or points to it, must leave ``connections`` empty.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Connection:
    peer: tuple[str, int]
    first_bytes: bytes


@dataclass
class RecordingListener:
    host: str
    sock: socket.socket = field(init=False)
    connections: list[Connection] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.host, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"listener-{self.host}")
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
            self.connections.append(Connection(peer, data))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
