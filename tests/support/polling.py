"""Reading metrics and waiting for conditions in tests (bounded in time, never sleeping blindly)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from stream_monitor.metrics import Metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """A sample's value, 0 when the labelled series does not exist yet."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    """Poll ``check`` on the loop until it is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


async def until_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str,
                      interval: float = 0.1) -> None:
    """Like :func:`until` for a check that must await (HTTP, Redis)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)
