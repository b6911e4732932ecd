"""Video ingest: sources (RTSP, files/HTTP, synthetic, WebRTC) and the per-stream supervisor.

``open_source(stream_id, url, cfg)`` picks a Source by URL scheme (explicit table in
:mod:`.base`); :class:`StreamSupervisor` runs one stream with its decode thread, bounded
hand-off, reconnect with backoff and stall watchdog. WebRTC streams have no URL: a WHIP
session (:mod:`stream_monitor.api.whip_sessions`) builds a :class:`.webrtc.WebRtcSource` on
its peer's video track; :mod:`.sdp` checks the publisher's offer.
"""

from .base import SOURCES, Source, check_url, open_source
from .supervisor import StreamStatus, StreamSupervisor
from .synthetic import SyntheticScene, SyntheticSpec, parse_synthetic_url, synthetic_frames

__all__ = ["SOURCES", "Source", "StreamStatus", "StreamSupervisor", "SyntheticScene", "SyntheticSpec",
           "check_url", "open_source", "parse_synthetic_url", "synthetic_frames"]
