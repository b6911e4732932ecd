"""WHIP sessions: one aiortc peer connection per publisher, feeding one monitored stream.

:meth:`WhipSessions.create` (the ``POST /whip/{stream_id}`` work):

1. Refused before any peer exists: at ``webrtc.max_sessions`` (:class:`AtCapacity`), the
   stream id is live — a stream that has not ended, or another session negotiating it —
   (:class:`~stream_monitor.app.StreamExists`), an offer that cannot be ingested
   (:class:`~stream_monitor.ingest.sdp.BadOffer`).
2. Offer candidates outside ``webrtc.allowed_candidate_networks`` are removed; the peer gets
   only the configured ICE servers (none by default) and only ``webrtc.host_addresses`` as
   host candidates (:func:`restrict_host_addresses`).
3. The answer is ``recvonly`` for every section (RFC 9725 §4.2) and carries every local
   candidate (gathering completes in ``setLocalDescription``; no trickle). Audio is not
   analysed: a task reads and discards it, because aiortc queues received frames without
   bound until someone reads them.
4. ``monitor.add_stream(stream_id, "whip:<session id>", opener=...)`` with a
   :class:`~stream_monitor.ingest.webrtc.WebRtcSource` on the video track: from here on it
   is a stream like any other (faces, windows, detectors, alerts, metrics, ``/streams``). It
   is ``connecting`` until the first frame; if ICE never connects the supervisor's stall
   watchdog (``ingest.open_timeout_s + stall_timeout_s``) ends it.

A session ends once, whichever comes first: ``DELETE`` of its resource, its connection
failing or closing (the publisher left), its stream ending (track ended, stall,
``DELETE /streams/{id}``, ``Monitor.stop``), or :meth:`WhipSessions.close_all` at shutdown.
Ending closes the source, so the stream ends like a finished file (state ``ended``, still
listed until a new publish under the same id replaces it): the pipeline scores the final
windows and sends the end events of open incidents. Then the peer connection is closed and
``end`` waits up to ``END_WAIT_S`` for the stream to finish.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..errors import StreamExists
from ..config import WebRtcConfig
from ..errors import SourceError, StreamMonitorError
from ..ingest.sdp import BadOffer, check_offer, filter_candidates
from ..ingest.webrtc import WebRtcSource

if TYPE_CHECKING:
    from ..app import Monitor, StreamHandle

log = logging.getLogger(__name__)

END_WAIT_S = 5.0


class AtCapacity(StreamMonitorError):
    """No WHIP session can be added now (HTTP 503 with ``Retry-After``)."""


def restrict_host_addresses(addresses: list[str]) -> None:
    """Make aioice offer only ``addresses`` as ICE host candidates, process-wide.

    aioice's own ``get_host_addresses`` offers every interface except loopback. aioice looks
    the name up at call time, so replacing it covers every peer created afterwards (the
    publishers of the tests in the same process too).
    """
    versions = {a: ipaddress.ip_address(a).version for a in addresses}

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a, v in versions.items() if (v == 4 and use_ipv4) or (v == 6 and use_ipv6)]

    aioice.ice.get_host_addresses = host_addresses


@dataclass(eq=False)
class WhipSession:
    """One publisher. ``location`` is its resource; ``etag`` identifies its ICE session."""

    id: str
    stream_id: str
    pc: RTCPeerConnection
    etag: str
    answer: str = ""
    source: WebRtcSource | None = None
    drains: list["asyncio.Task[None]"] = field(default_factory=list)
    handle: "StreamHandle | None" = None
    created_at: float = field(default_factory=time.time)
    end_reason: str | None = None
    _ending: "asyncio.Task[None] | None" = None

    @property
    def location(self) -> str:
        return f"/whip/{self.stream_id}/{self.id}"


class WhipSessions:
    """The WHIP sessions of one monitor; see the module docstring for the lifecycle."""

    def __init__(self, monitor: "Monitor", cfg: WebRtcConfig) -> None:
        self.monitor = monitor
        self.cfg = cfg
        self._sessions: dict[str, WhipSession] = {}
        self._ending: set[asyncio.Task[None]] = set()
        self._gauge = monitor.metrics.whip_sessions
        self._gauge.set(0)
        restrict_host_addresses(cfg.host_addresses)

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, stream_id: str, session_id: str) -> WhipSession | None:
        session = self._sessions.get(session_id)
        return session if session is not None and session.stream_id == stream_id else None

    async def create(self, stream_id: str, offer: str) -> WhipSession:
        """Negotiate a publisher's offer and start its stream; raises AtCapacity, StreamExists, BadOffer."""
        # No await from these checks to the session's registration below: a concurrent POST for
        # the same id gets 409, and sessions still negotiating count towards the capacity.
        if len(self._sessions) >= self.cfg.max_sessions:
            raise AtCapacity(f"{len(self._sessions)} WHIP sessions are running (webrtc.max_sessions); try later")
        self._check_free(stream_id)
        check_offer(offer)
        offer, kept, dropped = filter_candidates(offer, self.cfg.allowed_candidate_networks)
        if dropped:
            log.info("WHIP %s: dropped %d offer candidate(s) outside webrtc.allowed_candidate_networks (%d kept)",
                     stream_id, dropped, kept)
        servers = [RTCIceServer(urls=s.urls, username=s.username, credential=s.credential)
                   for s in self.cfg.ice_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        session = WhipSession(secrets.token_urlsafe(16), stream_id, pc, etag=f'"{secrets.token_hex(8)}"')
        self._sessions[session.id] = session
        self._gauge.set(len(self._sessions))

        @pc.on("connectionstatechange")
        def changed() -> None:
            log.info("WHIP %s: connection %s", stream_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed") and session.handle is not None:
                self._end(session, f"the connection {pc.connectionState}")

        try:
            track = await self._negotiate(session, offer)
            session.handle = await self.monitor.add_stream(
                stream_id, f"whip:{session.id}", opener=lambda: self._open_source(session, track))
        except BaseException:
            self._sessions.pop(session.id, None)
            self._gauge.set(len(self._sessions))
            await pc.close()
            raise
        session.handle.task.add_done_callback(lambda _: self._end(session, "the stream ended"))
        if pc.connectionState in ("failed", "closed"):  # while the stream was being added
            self._end(session, f"the connection {pc.connectionState}")
        log.info("WHIP %s: session %s created", stream_id, session.id)
        return session

    async def end(self, session: WhipSession, reason: str) -> None:
        """End ``session`` (idempotent) and wait until its stream has finished."""
        await asyncio.shield(self._end(session, reason))

    async def close_all(self) -> None:
        """End every session and wait for all endings, those already under way too (shutdown)."""
        for session in list(self._sessions.values()):
            self._end(session, "the service is stopping")
        if self._ending:
            await asyncio.wait(set(self._ending), timeout=END_WAIT_S + 5.0)

    # ---------------------------------------------------------------- internals

    def _check_free(self, stream_id: str) -> None:
        handle = self.monitor.streams.get(stream_id)
        if handle is not None and not handle.task.done():
            raise StreamExists(f"stream {stream_id!r} is live ({handle.url}); end it first")
        if any(s.stream_id == stream_id for s in self._sessions.values()):
            raise StreamExists(f"another WHIP session is publishing stream {stream_id!r}")

    async def _negotiate(self, session: WhipSession, offer: str) -> MediaStreamTrack:
        pc = session.pc
        tracks: list[MediaStreamTrack] = []
        pc.on("track", tracks.append)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        except Exception as exc:  # aiortc's parser and checks raise ValueError, OperationError, ...
            log.debug("WHIP %s: offer refused", session.stream_id, exc_info=True)
            raise BadOffer(f"the offer was refused: {type(exc).__name__}: {exc}") from exc
        video = [t for t in tracks if t.kind == "video"]
        if len(video) != 1:
            raise BadOffer(f"the offer must send exactly one video track (it sends {len(video)})")
        session.drains = [asyncio.create_task(_discard(t)) for t in tracks if t.kind != "video"]
        await pc.setLocalDescription(await pc.createAnswer())
        session.answer = pc.localDescription.sdp
        return video[0]

    def _open_source(self, session: WhipSession, track: MediaStreamTrack) -> WebRtcSource:
        if session.source is not None:  # finite sources are opened once; this guards the contract
            raise SourceError(f"WHIP session {session.id} was already consumed; publish again")
        dropped = self.monitor.metrics.frames_dropped.labels(session.stream_id, "ingest")
        session.source = WebRtcSource(session.stream_id, track, on_drop=dropped.inc)
        return session.source

    def _end(self, session: WhipSession, reason: str) -> "asyncio.Task[None]":
        if session._ending is None:
            session.end_reason = reason
            self._sessions.pop(session.id, None)
            self._gauge.set(len(self._sessions))
            log.info("WHIP %s: session %s ends: %s", session.stream_id, session.id, reason)
            session._ending = asyncio.get_running_loop().create_task(self._close(session))
            self._ending.add(session._ending)
            session._ending.add_done_callback(self._ending.discard)
        return session._ending

    async def _close(self, session: WhipSession) -> None:
        if session.source is not None:
            session.source.close()  # the stream ends: final windows, incidents' end events
        for drain in session.drains:
            drain.cancel()
        try:
            await session.pc.close()
        except Exception:  # a failing close must not keep the stream from finishing
            log.exception("WHIP %s: closing the peer connection failed", session.stream_id)
        if session.handle is not None and not session.handle.task.done():
            await asyncio.wait({session.handle.task}, timeout=END_WAIT_S)


async def _discard(track: MediaStreamTrack) -> None:
    """Read and drop a track nobody analyses (audio) until it ends."""
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass
