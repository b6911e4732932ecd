"""Bounded hand-off of items from one decode thread to the asyncio loop.

The decode thread calls :meth:`FrameHandoff.put`; a coroutine on the loop awaits
:meth:`FrameHandoff.get`. Overload policy is chosen per source (DESIGN.md §2):

- ``drop_oldest=True`` (live video): ``put`` never blocks; when full, the oldest queued
  item is discarded and ``on_drop(1)`` is called (the caller counts it). A slow consumer
  never stalls ingest, and it always sees the newest frames.
- ``drop_oldest=False`` (a file read faster than real time): ``put`` blocks while full,
  which slows the decoder down to the consumer's pace (backpressure); it gives up when
  the ``cancel`` event is set.

:meth:`finish` marks the end after the queued items; :meth:`abort` discards everything and
wakes the consumer at once (stop, stall). The loop is woken with ``call_soon_threadsafe``
only when a consumer is actually waiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class FrameHandoff(Generic[T]):
    """A bounded thread -> loop queue with drop-oldest or blocking overload behaviour."""

    def __init__(self, loop: asyncio.AbstractEventLoop, capacity: int, drop_oldest: bool,
                 on_drop: Callable[[int], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._loop = loop
        self.capacity = capacity
        self.drop_oldest = drop_oldest
        self._on_drop = on_drop
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)
        self._ready = asyncio.Event()
        self._waiting = False
        self._finished = False
        self._aborted = False

    def put(self, item: T, cancel: threading.Event | None = None) -> bool:
        """Queue ``item`` (decode thread). False when it was not queued (aborted or cancelled)."""
        dropped = 0
        with self._lock:
            while not self.drop_oldest and len(self._items) >= self.capacity and not self._aborted:
                if cancel is not None and cancel.is_set():
                    return False
                # Short waits so a cancel (stop, stall) is noticed even if nobody notifies.
                self._not_full.wait(0.1)
            if self._aborted or self._finished:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                dropped = 1
            self._items.append(item)
            wake = self._waiting
            self._waiting = False
        if dropped and self._on_drop is not None:
            self._on_drop(dropped)
        if wake:
            self._wake()
        return True

    def finish(self) -> None:
        """No more items will come; ``get`` returns None once the queue is drained (any thread)."""
        with self._lock:
            self._finished = True
            wake = self._waiting
            self._waiting = False
        if wake:
            self._wake()

    def abort(self) -> None:
        """Discard queued items, refuse new ones, wake the consumer and a blocked producer."""
        with self._lock:
            self._aborted = True
            self._items.clear()
            self._not_full.notify_all()
            wake = self._waiting
            self._waiting = False
        if wake:
            self._wake()

    async def get(self) -> T | None:
        """Next item in order, or None after finish() (once drained) or abort()."""
        while True:
            with self._lock:
                if self._aborted:
                    return None
                if self._items:
                    item = self._items.popleft()
                    self._not_full.notify()
                    return item
                if self._finished:
                    return None
                self._waiting = True
                self._ready.clear()
            await self._ready.wait()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def _wake(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:
            pass  # the loop is closed: an abandoned decode thread outlived the service
