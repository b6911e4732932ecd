"""Redis clients for the service: one place that says how they connect and retry.

redis-py retries a command after a connection error or a timeout by default (three times in
redis-py 6+). For a command that Redis may already have applied (an ``XADD`` whose reply came
after the socket timeout, a ``SET NX`` that claimed a lease) a resend duplicates it or turns our
own success into a refusal, so every client here is built without library retries: the callers
own their retry policy (:class:`~stream_monitor.retry.Backoff`) and make what they resend
idempotent (the alert publisher's dedupe script, the fleet's compare-and-set scripts).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff


def redis_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """``redis.asyncio.Redis.from_url(url, **kwargs)`` with no library retries.
    ``rediss://`` URLs connect over TLS (redis-py's own handling of the scheme)."""
    return aioredis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), retry_on_error=[], **kwargs)
