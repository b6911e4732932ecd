"""Checks and rewrites of a WHIP publisher's SDP offer, before aiortc sees it (pure text work).

aiortc accepts almost any text as an offer (``"garbage"`` gives a session with no media),
so :func:`check_offer` decides whether an offer is something a WHIP ingest can use, with a
message that says what is wrong: SDP syntax (``type=value`` lines starting with ``v=0``),
exactly one video section that the publisher sends (WHIP carries one MediaStream with at
most one video track), and a codec aiortc decodes (VP8 or H.264). Audio may be offered;
the answer declines it (``inactive``).

:func:`filter_candidates` removes ``a=candidate`` lines whose address is not an IP inside
the allowed networks (LAN or public addresses, mDNS ``.local`` names), so the ICE agent
never sends a connectivity check anywhere else. A peer that reaches one of our own host
candidates can still be learnt as peer-reflexive (RFC 8445), which needs our address.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Iterable

from ..errors import StreamMonitorError

SUPPORTED_VIDEO_CODECS = ("VP8", "H264")
_LINE = re.compile(r"^[a-z]=")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


class BadOffer(StreamMonitorError):
    """The SDP offer cannot be used; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class Section:
    """One ``m=`` section: media kind, port, direction (from the publisher's side), codec names."""

    kind: str
    port: int
    direction: str
    codecs: tuple[str, ...]


def sections(sdp: str) -> list[Section]:
    """Parse ``sdp``'s media sections; raise BadOffer on anything that is not SDP."""
    lines = [line.rstrip("\r") for line in sdp.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or lines[0] != "v=0":
        raise BadOffer("not an SDP offer: it must start with the line v=0")
    session_direction = "sendrecv"
    found: list[Section] = []
    for number, line in enumerate(lines, start=1):
        if not _LINE.match(line):
            raise BadOffer(f"not an SDP offer: line {number} is not a type=value line: {line[:60]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise BadOffer(f"malformed media line {number}: {line[:60]!r}")
            found.append(Section(parts[0], int(parts[1].split("/")[0]), session_direction, ()))
        elif kind == "a" and value in _DIRECTIONS:
            if found:
                found[-1] = replace(found[-1], direction=value)
            else:
                session_direction = value
        elif kind == "a" and value.startswith("rtpmap:") and " " in value and found:
            codec = value.split(None, 1)[1].split("/")[0].upper()
            found[-1] = replace(found[-1], codecs=found[-1].codecs + (codec,))
    return found


def check_offer(sdp: str) -> Section:
    """The offer's video section, or BadOffer saying why the offer cannot be ingested."""
    media = sections(sdp)
    if not media:
        raise BadOffer("the offer has no media section (m=)")
    video = [m for m in media if m.kind == "video" and m.port != 0 and m.direction in ("sendonly", "sendrecv")]
    if not video:
        raise BadOffer("the offer sends no video (a WHIP publisher needs one sendonly or sendrecv m=video section)")
    if len(video) > 1:
        raise BadOffer(f"the offer sends {len(video)} video tracks; WHIP ingest takes one")
    offered = video[0].codecs
    if not any(c in SUPPORTED_VIDEO_CODECS for c in offered):
        raise BadOffer(f"no supported video codec in the offer (offered: {', '.join(offered) or 'none'}; "
                       f"supported: VP8, H264)")
    return video[0]


def filter_candidates(sdp: str, networks: Iterable[str]) -> tuple[str, int, int]:
    """``sdp`` without the candidates outside ``networks``; returns (sdp, kept, dropped)."""
    nets = [ipaddress.ip_network(n, strict=False) for n in networks]
    out: list[str] = []
    kept = dropped = 0
    newline = "\r\n" if "\r\n" in sdp else "\n"
    for line in sdp.split(newline):
        if line.startswith("a=candidate:"):
            if _allowed(line, nets):
                kept += 1
            else:
                dropped += 1
                continue
        out.append(line)
    return newline.join(out), kept, dropped


def _allowed(line: str, nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    parts = line.split()
    if len(parts) < 8:
        return False
    try:
        address = ipaddress.ip_address(parts[4])
    except ValueError:  # a hostname, typically an mDNS .local name
        return False
    return any(address.version == n.version and address in n for n in nets)
