"""The HTTP listeners' connection limits: slow header senders and connection floods.

:class:`GuardedSite` is an aiohttp TCP site (a :class:`aiohttp.web.BaseSite`, as
``TCPSite``) that wraps every connection's aiohttp protocol in :class:`_Guard`:

- at most ``ConnectionLimits.max_connections`` connections are open at once; one beyond
  is closed as soon as it is accepted, before anything is read from it;
- the first request's header block must be complete (its blank line received) within
  ``ConnectionLimits.header_timeout_s`` of the connection opening, else the connection is
  closed: a client sending its headers a byte at a time holds nothing for longer.

Later requests on a kept-alive connection are aiohttp's: its ``keepalive_timeout`` (the
runner's, ``api.keepalive_timeout_s``) closes a connection idle that long after a response,
partial headers of a next request included (their bytes do not extend it). aiohttp also
bounds the header block's size (8190-byte lines and fields, 128 headers) and the body
(``client_max_size``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, cast

from aiohttp import web

log = logging.getLogger(__name__)

# A header block ends at an empty line; aiohttp's parsers want CRLF, a bare LF pair is
# accepted here too so that no request aiohttp parses is ever cut off by the deadline.
_HEADER_ENDS = (b"\r\n\r\n", b"\n\n")
_TAIL = 3  # bytes kept from the previous chunk: a terminator may be split across reads


@dataclass(frozen=True)
class ConnectionLimits:
    """``header_timeout_s``: seconds from a connection's opening to its first request's
    complete headers; ``max_connections``: connections open at once on one listener."""

    header_timeout_s: float
    max_connections: int


class _Guard(asyncio.Protocol):
    """One connection: admitted or refused by the count, then aiohttp's protocol behind a
    header deadline. Every transport callback is passed on to aiohttp's protocol."""

    def __init__(self, make_protocol: Callable[[], asyncio.Protocol], limits: ConnectionLimits,
                 open_guards: set["_Guard"]) -> None:
        self._make_protocol = make_protocol
        self._limits = limits
        self._open = open_guards
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.BaseTransport | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self._open) >= self._limits.max_connections:
            log.warning("HTTP: %d connections open (api.max_connections); refusing one from %s",
                        len(self._open), transport.get_extra_info("peername"))
            cast(asyncio.Transport, transport).abort()  # a TCP server's transports are Transports
            return
        self._open.add(self)
        self._transport = transport
        self._deadline = asyncio.get_running_loop().call_later(self._limits.header_timeout_s, self._too_slow)
        self._inner = self._make_protocol()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if self._deadline is not None:
            window = self._tail + data
            if any(end in window for end in _HEADER_ENDS):
                self._deadline.cancel()
                self._deadline = None
                self._tail = b""
            else:
                self._tail = window[-_TAIL:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return  # refused: aiohttp never saw it
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._open.discard(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _too_slow(self) -> None:
        self._deadline = None
        if self._transport is not None and not self._transport.is_closing():
            log.info("HTTP: closing a connection from %s: no complete request headers within %.1fs "
                     "(api.header_timeout_s)", self._transport.get_extra_info("peername"),
                     self._limits.header_timeout_s)
            self._transport.close()


class GuardedSite(web.BaseSite):
    """A TCP listener of ``runner`` on ``host``:``port`` (0: any free port, see :attr:`port`)
    whose connections are held to ``limits`` (see the module docstring)."""

    __slots__ = ("_host", "_port", "_limits", "_guards", "_listener")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limits: ConnectionLimits) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._limits = limits
        self._guards: set[_Guard] = set()
        self._listener: asyncio.Server | None = None

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def port(self) -> int:
        """The bound port once started (the one the OS chose when 0 was asked for)."""
        sockets = self._listener.sockets if self._listener is not None else ()
        return int(sockets[0].getsockname()[1]) if sockets else self._port

    @property
    def open_connections(self) -> int:
        """Connections admitted and not yet closed."""
        return len(self._guards)

    async def start(self) -> None:
        await super().start()  # registers the site with its runner, which stops it at cleanup
        server: Any = self._runner.server  # aiohttp's web.Server: a protocol factory
        assert server is not None, "runner.setup() first"
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(lambda: _Guard(server, self._limits, self._guards),
                                                  self._host, self._port)
        self._server = self._listener  # BaseSite.stop() closes it
