"""``stream-monitor alerts tail``: the durable log's last N alerts, then the live channel."""

from __future__ import annotations

import json
from typing import Any, Callable

from ..redis_client import redis_client


async def tail(url: str, prefix: str, stream_id: str | None, history: int, count: int | None,
               emit: Callable[[str], None]) -> None:
    """Print alert JSON lines: ``history`` from ``XREVRANGE {prefix}:alerts``, then live
    from ``PSUBSCRIBE {prefix}:alerts:*`` (or one stream's channel) until ``count`` arrive."""
    client = redis_client(url)
    try:
        if history > 0:
            entries: Any = await client.xrevrange(f"{prefix}:alerts", count=history * (1 if stream_id is None else 10))
            lines = [fields[b"alert"].decode() for _, fields in reversed(entries or [])]
            if stream_id is not None:
                lines = [ln for ln in lines if json.loads(ln).get("stream_id") == stream_id][-history:]
            for line in lines:
                emit(line)
        pubsub = client.pubsub()
        if stream_id is None:
            await pubsub.psubscribe(f"{prefix}:alerts:*")
        else:
            await pubsub.subscribe(f"{prefix}:alerts:{stream_id}")
        seen = 0
        async for message in pubsub.listen():
            if message["type"] not in ("message", "pmessage"):
                continue
            emit(message["data"].decode())
            seen += 1
            if count is not None and seen >= count:
                break
        await pubsub.aclose()
    finally:
        await client.aclose()
