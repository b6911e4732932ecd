"""A WHIP publisher for tests: aiortc on loopback sending the synthetic face as live video.

Network safety (ENVIRONMENT.md §1): no ICE servers, and :func:`loopback_only` makes aioice
offer 127.0.0.1 as its only host address (it skips loopback and offers every other
interface otherwise).
"""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction
from typing import Any

import aiohttp
import aioice.ice
import av
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, MediaStreamTrack
from multidict import CIMultiDict

from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames

VIDEO_CLOCK = 90_000


def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else [])


class FaceTrack(MediaStreamTrack):
    """Live video of the synthetic moving face, paced at ``fps`` (pts on the 90 kHz clock)."""

    kind = "video"

    def __init__(self, fps: int = 10, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.fps = fps
        self._frames = synthetic_frames(SyntheticSpec(fps=fps, width=width, height=height))
        self._start: float | None = None
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        await asyncio.sleep(max(0.0, self._start + self.sent / self.fps - now))
        frame = av.VideoFrame.from_ndarray(next(self._frames), format="rgb24").reformat(format="yuv420p")
        frame.pts = self.sent * VIDEO_CLOCK // self.fps
        frame.time_base = Fraction(1, VIDEO_CLOCK)
        self.sent += 1
        return frame


class Publisher:
    """One WHIP client session: ``post`` the offer, then ``delete`` (or just ``close`` the peer)."""

    def __init__(self, http: aiohttp.ClientSession, base: str, stream_id: str, token: str | None,
                 codec: str = "VP8", video: bool = True, audio: bool = False) -> None:
        self.http, self.base, self.stream_id, self.token = http, base, stream_id, token
        self.track = FaceTrack()
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        if video:
            transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
            codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType == f"video/{codec}"]
            assert codecs, f"aiortc has no {codec} encoder"
            transceiver.setCodecPreferences(codecs)
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")  # silence
        self.status: int | None = None
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.body: Any = None
        self.location: str | None = None

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers every candidate
        return str(self.pc.localDescription.sdp)

    async def post(self, offer: str | None = None) -> int:
        """POST the offer (ours unless given); on 201 apply the answer. Returns the status."""
        sdp = offer if offer is not None else await self.offer()
        headers = {"Content-Type": "application/sdp", **self._auth()}
        async with self.http.post(f"{self.base}/whip/{self.stream_id}", data=sdp, headers=headers) as resp:
            self.status, self.headers = resp.status, resp.headers.copy()
            self.body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        if self.status == 201:
            self.location = self.headers["Location"]
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self.body, type="answer"))
        return self.status

    async def delete(self) -> int:
        assert self.location is not None
        async with self.http.delete(self.base + self.location, headers=self._auth()) as resp:
            return resp.status

    async def close(self) -> None:
        await self.pc.close()
