"""A one-connection RTSP relay between FFmpeg and a camera whose address was checked.

FFmpeg's RTSP client resolves the host itself and follows ``3xx`` redirects to any host, and
with UDP transport a server's ``source=`` parameter picks where RTP packets go. For a stream
from the network (:mod:`.policy`) FFmpeg therefore talks to this relay on ``127.0.0.1``
over TCP only (RTP interleaved on the RTSP connection): the relay owns the one connection to
the camera (a socket the guard made to a checked address; TLS for ``rtsps`` is done here,
with SNI for the camera's name, so FFmpeg speaks plain RTSP to the relay), passes the
client's bytes through unchanged and reads the server's as RTSP (:class:`ServerStream`):
responses, server requests and ``$``-framed interleaved data. A redirect (a ``3xx`` status,
a ``REDIRECT`` request or any ``Location`` header) or bytes that are not RTSP end the relay
with :attr:`RtspRelay.refusal` set, before FFmpeg sees them.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import socket
import ssl
import threading

MAX_HEADER_BYTES = 64 << 10
_STATUS = re.compile(rb"RTSP/\d\.\d (\d{3})")
_REQUEST = re.compile(rb"([A-Z_]+) \S+ RTSP/\d\.\d")
_ACCEPT_TIMEOUT_S = 30.0


class RelayRefused(Exception):
    """The server sent something the relay does not pass on (a redirect, or not RTSP)."""


class ServerStream:
    """Parses the server-to-client byte stream of one RTSP connection (pure, no I/O).

    :meth:`feed` returns the bytes that may go to the client, holding back an incomplete
    header until it is whole; raises :class:`RelayRefused` on a redirect or malformed data.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pass = 0  # bytes of a body or an interleaved frame still to pass through

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = bytearray()
        while self._buf:
            if self._pass:
                n = min(self._pass, len(self._buf))
                out += self._buf[:n]
                del self._buf[:n]
                self._pass -= n
                continue
            if self._buf[0] == 0x24:  # '$' channel length(2) payload: RTP/RTCP interleaved
                if len(self._buf) < 4:
                    break
                self._pass = 4 + int.from_bytes(self._buf[2:4], "big")
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES or not self._could_be_message():
                    raise RelayRefused("the server sent data that is not RTSP")
                break
            head = bytes(self._buf[:end + 4])
            self._check(head)
            length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
            out += head
            del self._buf[:end + 4]
            self._pass = int(length.group(1)) if length else 0
        return bytes(out)

    def _could_be_message(self) -> bool:
        first = bytes(self._buf[:16])
        return first.startswith(b"RTSP/"[:len(first)]) or re.fullmatch(rb"[A-Z_]*( .*)?", first, re.S) is not None

    @staticmethod
    def _check(head: bytes) -> None:
        line = head.split(b"\r\n", 1)[0]
        status = _STATUS.match(line)
        request = _REQUEST.match(line)
        if status is None and request is None:
            raise RelayRefused("the server sent data that is not RTSP")
        if status is not None and status.group(1).startswith(b"3") or request is not None and \
                request.group(1) == b"REDIRECT" or re.search(rb"(?im)^location:", head):
            raise RelayRefused("the server redirected the stream; redirects are not followed for streams "
                               "added over the network (add the final URL)")


class RtspRelay:
    """Relays one FFmpeg connection on ``127.0.0.1:port`` to ``upstream`` (already connected).

    :meth:`start` runs the relay in a daemon thread; :meth:`close` ends it from any thread.
    """

    def __init__(self, upstream: socket.socket) -> None:
        self.upstream = upstream
        self.refusal: str | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"rtsp-relay-{self.port}")

    @staticmethod
    def tls(upstream: socket.socket, server_name: str) -> socket.socket:
        """``upstream`` wrapped in TLS for ``rtsps``. Like FFmpeg's own ``tls`` protocol
        (``tls_verify=0``) the camera's certificate is not verified: cameras mostly carry
        self-signed ones; the host was checked by address before connecting."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(upstream, server_hostname=server_name or None)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        for sock in (self._listener, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()

    def _run(self) -> None:
        client: socket.socket | None = None
        try:
            self._listener.settimeout(_ACCEPT_TIMEOUT_S)
            client, _ = self._listener.accept()
            self._listener.close()  # one connection only: nobody else gets in
            self._pump(client)
        except RelayRefused as exc:
            self.refusal = str(exc)
        except OSError:
            pass  # either side closed: FFmpeg reports the end of the stream
        finally:
            if client is not None:
                with contextlib.suppress(OSError):
                    client.close()
            self.close()

    def _pump(self, client: socket.socket) -> None:
        server = ServerStream()
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ, "client")
            sel.register(self.upstream, selectors.EVENT_READ, "server")
            self.upstream.setblocking(True)
            self.upstream.settimeout(None)
            while not self._closed.is_set():
                for key, _ in sel.select(timeout=0.5):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if key.data == "client":
                        self.upstream.sendall(data)
                        continue
                    # TLS may hold decrypted bytes that select() cannot see: drain them too.
                    while isinstance(sock, ssl.SSLSocket) and sock.pending():
                        data += sock.recv(sock.pending())
                    client.sendall(server.feed(data))
