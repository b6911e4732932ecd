"""HTTP(S) bodies for PyAV's ``io_open``, with every connection and redirect checked.

FFmpeg's own HTTP client resolves host names itself and follows redirects to any host, so a
source from the network (``POST /streams``, ``/predict``) reads HTTP through
:class:`GuardedHttpReader` instead: the host is resolved and checked by the guard's
:class:`~stream_monitor.ingest.policy.HostPolicy`, the connection goes to the checked address
(TLS still verifies the certificate for the host name), and redirects (at most
:data:`MAX_REDIRECTS`) are followed here, each target checked the same way before anything
connects to it. Seeking uses ``Range`` requests when the server accepts them.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import socket
import ssl
from typing import Protocol
from urllib.parse import unquote, urljoin, urlsplit

from ..errors import SourceError, SourceRefused
from .urls import redact

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_SKIP = 64 << 20  # bytes read and discarded to reach an offset on a server without ranges


class Guard(Protocol):
    """What the reader needs of :class:`~stream_monitor.ingest.policy.SourceGuard`."""

    timeout_s: float

    def check(self, url: str) -> None: ...

    def connect(self, url: str) -> socket.socket: ...


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection whose socket comes from the guard (a checked address)."""

    def __init__(self, url: str, guard: Guard) -> None:
        parts = urlsplit(url)
        self._tls = parts.scheme.lower() == "https"
        super().__init__(parts.hostname or "", parts.port or (443 if self._tls else 80), timeout=guard.timeout_s)
        self._url = url
        self._guard = guard

    def connect(self) -> None:
        sock = self._guard.connect(self._url)
        if self._tls:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        self.sock = sock


class GuardedHttpReader(io.RawIOBase):
    """A read-only file over one HTTP(S) URL (``name`` is the URL, for FFmpeg's relative
    references). Opens at construction, so refusals and errors surface from ``io_open``."""

    def __init__(self, url: str, guard: Guard) -> None:
        super().__init__()
        self.name = url
        self._guard = guard
        self._pos = 0
        self._size: int | None = None
        self._ranges = False
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._open(0)

    # ------------------------------------------------------------------ requests

    def _request(self, offset: int) -> None:
        url = self.name
        first_host = urlsplit(url).hostname
        for _ in range(MAX_REDIRECTS + 1):
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise SourceRefused(f"{redact(url)!r}: a redirect may not leave http(s)")
            self._guard.check(url)  # text, scheme, host entries: before any connection
            conn = _PinnedConnection(url, self._guard)
            parts = urlsplit(url)
            headers = {"User-Agent": "stream-monitor", "Accept": "*/*", "Connection": "close"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            if parts.username is not None and parts.hostname == first_host:
                pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
            try:
                conn.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), headers=headers)
                resp = conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                if isinstance(exc, SourceError):
                    raise
                raise OSError(f"{redact(url)}: {type(exc).__name__}: {exc}") from exc
            if resp.status in _REDIRECTS:
                location = resp.getheader("Location")
                resp.close()
                conn.close()
                if not location:
                    raise SourceError(f"{redact(url)!r}: HTTP {resp.status} without a Location")
                url = urljoin(url, location.strip())
                continue
            if resp.status not in (200, 206):
                resp.close()
                conn.close()
                raise SourceError(f"{redact(url)!r}: HTTP {resp.status} {resp.reason}")
            self._conn, self._resp = conn, resp
            self._note_size(resp, offset)
            if offset and resp.status == 200:
                self._skip(offset)  # the server ignored the range: read up to the offset
            return
        raise SourceError(f"{redact(self.name)!r}: more than {MAX_REDIRECTS} redirects")

    def _note_size(self, resp: http.client.HTTPResponse, offset: int) -> None:
        content_range = resp.getheader("Content-Range") or ""
        total = content_range.rpartition("/")[2]
        if resp.status == 206 and total.isdigit():
            self._size, self._ranges = int(total), True
            return
        length = resp.getheader("Content-Length")
        if resp.status == 200 and length is not None and length.isdigit():
            self._size = int(length)
        self._ranges = self._ranges or (resp.getheader("Accept-Ranges") or "").lower() == "bytes"

    def _skip(self, offset: int) -> None:
        if offset > _MAX_SKIP:
            raise OSError(f"{redact(self.name)}: the server does not serve byte ranges")
        left = offset
        while left:
            assert self._resp is not None
            chunk = self._resp.read(min(left, 1 << 16))
            if not chunk:
                break
            left -= len(chunk)

    def _open(self, offset: int) -> None:
        self._close_response()
        self._request(offset)
        self._pos = offset

    def _close_response(self) -> None:
        if self._resp is not None:
            self._resp.close()
        if self._conn is not None:
            self._conn.close()
        self._resp = self._conn = None

    # ------------------------------------------------------------------ file interface

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._ranges and self._size is not None

    def read(self, size: int = -1) -> bytes:
        if self._resp is None:
            self._open(self._pos)
        assert self._resp is not None
        try:
            data = self._resp.read1(size if size >= 0 else 1 << 16)
        except http.client.HTTPException as exc:
            raise OSError(f"{redact(self.name)}: {type(exc).__name__}: {exc}") from exc
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            target = offset
        elif whence == os.SEEK_CUR:
            target = self._pos + offset
        elif whence == os.SEEK_END and self._size is not None:
            target = self._size + offset
        else:
            raise OSError("cannot seek from the end: the size is unknown")
        if target != self._pos:
            if not self.seekable():
                raise OSError("the server does not serve byte ranges")
            self._close_response()  # reopened at the new offset by the next read
            self._pos = target
        return self._pos

    def close(self) -> None:
        self._close_response()
        super().close()
