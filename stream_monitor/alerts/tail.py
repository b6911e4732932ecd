"""``stream-monitor alerts tail``: the durable log's last N alerts, then the live channel.

Stale owners (``reject_stale``, on by default): an event whose ``lease_epoch`` is below the
highest epoch already seen for its stream comes from a worker that has since lost the stream
to a later owner, and is not printed. Redis already refuses such events (the emit script,
:mod:`.publisher`); this guards a reader against any that got there by another way (an older
writer, a fail-over that lost the epoch counters). Events without ``lease_epoch`` (streams
outside a fleet) are always printed.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from ..redis_client import redis_client


class EpochFence:
    """Per stream, the highest ``lease_epoch`` seen; :meth:`admit` says whether an event's JSON
    line is current (not from an owner older than one already seen)."""

    def __init__(self) -> None:
        self.highest: dict[str, int] = {}
        self.rejected = 0

    def admit(self, line: str) -> bool:
        try:
            event = json.loads(line)
        except ValueError:
            return True  # not ours to judge: printed as it is
        return self.admit_event(event)

    def admit_event(self, event: Any) -> bool:
        """:meth:`admit` for an event already parsed."""
        epoch = event.get("lease_epoch") if isinstance(event, dict) else None
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return True
        stream = str(event.get("stream_id"))
        if epoch < self.highest.get(stream, epoch):
            self.rejected += 1
            return False
        self.highest[stream] = epoch
        return True


async def tail(url: str, prefix: str, stream_id: str | None, history: int, count: int | None,
               emit: Callable[[str], None], reject_stale: bool = True,
               rejected: Callable[[str], None] | None = None) -> None:
    """Print alert JSON lines: ``history`` from ``XREVRANGE {prefix}:alerts``, then live
    from ``PSUBSCRIBE {prefix}:alerts:*`` (or one stream's channel) until ``count`` arrive
    (rejected stale events do not count). With ``reject_stale``, events of stale owners go
    to ``rejected`` (if given) instead of ``emit``."""
    fence = EpochFence() if reject_stale else None

    def out(line: str) -> bool:
        if fence is not None and not fence.admit(line):
            if rejected is not None:
                rejected(line)
            return False
        emit(line)
        return True

    client = redis_client(url)
    try:
        if history > 0:
            entries: Any = await client.xrevrange(f"{prefix}:alerts", count=history * (1 if stream_id is None else 10))
            lines = [fields[b"alert"].decode() for _, fields in reversed(entries or [])]
            if stream_id is not None:
                lines = [ln for ln in lines if json.loads(ln).get("stream_id") == stream_id][-history:]
            for line in lines:
                out(line)
        pubsub = client.pubsub()
        if stream_id is None:
            await pubsub.psubscribe(f"{prefix}:alerts:*")
        else:
            await pubsub.subscribe(f"{prefix}:alerts:{stream_id}")
        seen = 0
        async for message in pubsub.listen():
            if message["type"] not in ("message", "pmessage"):
                continue
            if not out(message["data"].decode()):
                continue
            seen += 1
            if count is not None and seen >= count:
                break
        await pubsub.aclose()
    finally:
        await client.aclose()
