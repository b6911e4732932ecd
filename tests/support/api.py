"""Calling a running service from tests: its HTTP API and its alert log in Redis."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import redis.asyncio as aioredis


class Api:
    """JSON calls to the API at ``127.0.0.1:port``, with ``token`` as the bearer token unless a
    call names another (``token=None``: no ``Authorization`` header)."""

    _DEFAULT: Any = object()

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str | None = None) -> None:
        self.s, self.base, self.token = session, f"http://127.0.0.1:{port}", token

    async def call(self, method: str, path: str, token: Any = _DEFAULT, **kw: Any) -> tuple[int, Any]:
        """(status, body): the JSON body when the answer is JSON, else its text."""
        token = self.token if token is self._DEFAULT else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kw.pop("headers", {}))
        async with self.s.request(method, self.base + path, headers=headers, **kw) as resp:
            body: Any = await resp.text()
            if resp.content_type == "application/json":
                body = await resp.json()
            return resp.status, body


async def alert_log(url: str, key: str = "deepfake:alerts") -> list[dict[str, Any]]:
    """The alert events in the Redis Stream ``key``, oldest first."""
    client = aioredis.Redis.from_url(url)
    try:
        entries = await client.xrange(key)
    finally:
        await client.aclose()
    return [json.loads(fields[b"alert"]) for _, fields in entries]
