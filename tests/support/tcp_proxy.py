"""A TCP proxy on loopback that can hold the server's replies: a reply that arrives after the
client's timeout, as on a slow or congested Redis (the command did run)."""

from __future__ import annotations

import socket
import threading
import time


class DelayingProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port``. While ``hold_s`` is positive,
    the next ``hold_replies`` server-to-client chunks are delivered ``hold_s`` late."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.hold_s = 0.0
        self.hold_replies = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = int(self._sock.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def hold_next(self, replies: int, seconds: float) -> None:
        with self._lock:
            self.hold_replies, self.hold_s = replies, seconds

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the server is down (an outage): refuse this client, keep accepting
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, replies: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies:
                    with self._lock:
                        delay = self.hold_s if self.hold_replies > 0 else 0.0
                        self.hold_replies -= 1 if self.hold_replies > 0 else 0
                    if delay:
                        time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._sock.close()
