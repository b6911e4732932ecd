"""Size-or-deadline batching of requests from all streams into worker jobs.

A :class:`Batcher` is one lane (face detection, or one detector). Requests wait in a
bounded FIFO; a batch is released when ``max_batch`` requests are waiting or the oldest
has waited ``max_wait_s``, whichever comes first, and at most ``max_inflight`` batches
are on the worker at a time — while they run, new requests accumulate, so batches grow
with load instead of piling up jobs. When more than ``max_pending`` requests wait, the
oldest is shed: its future fails with :class:`Shed` and ``on_shed`` is called (the
caller counts it), which keeps latency bounded under overload (live video: the newest
frames matter most).

Everything here runs on the asyncio loop; only ``run_batch`` runs on the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Callable, Generic, Sequence, TypeVar

from .worker import InferenceWorker

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class Shed(Exception):
    """The request was dropped under overload before it ran."""


class Batcher(Generic[Req, Res]):
    """One batching lane feeding ``run_batch`` (executed on the worker thread)."""

    def __init__(self, name: str, worker: InferenceWorker, run_batch: Callable[[list[Req]], Sequence[Res]], *,
                 max_batch: int = 8, max_wait_s: float = 0.05, max_pending: int = 256, max_inflight: int = 1,
                 on_batch: Callable[[int, float], None] | None = None,
                 on_shed: Callable[[Req], None] | None = None) -> None:
        if max_batch < 1 or max_pending < max_batch or max_inflight < 1 or max_wait_s < 0:
            raise ValueError(f"bad batcher settings for {name}")
        self.name = name
        self._worker = worker
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self._on_batch = on_batch
        self._on_shed = on_shed
        self._pending: deque[tuple[Req, asyncio.Future[Res], float]] = deque()
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        self.shed = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, request: Req) -> "asyncio.Future[Res]":
        """Queue a request; the returned future resolves with its result (or :class:`Shed`)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Res] = loop.create_future()
        self._pending.append((request, fut, time.monotonic()))
        while len(self._pending) > self.max_pending:
            old, old_fut, _ = self._pending.popleft()
            self.shed += 1
            if not old_fut.done():
                old_fut.set_exception(Shed(f"{self.name}: shed under overload"))
            if self._on_shed is not None:
                self._on_shed(old)
        self._schedule()
        return fut

    def _schedule(self) -> None:
        if not self._pending or self._inflight >= self.max_inflight:
            return
        if len(self._pending) >= self.max_batch:
            self._release()
            return
        if self._timer is None:
            waited = time.monotonic() - self._pending[0][2]
            delay = max(0.0, self.max_wait_s - waited)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._pending and self._inflight < self.max_inflight:
            self._release()
        else:
            self._schedule()

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        live = [(r, f) for r, f, _ in batch if not f.cancelled()]
        if not live:
            self._schedule()
            return
        self._inflight += 1
        requests = [r for r, _ in live]
        job = asyncio.wrap_future(self._worker.submit(lambda: self._timed(requests)))
        job.add_done_callback(lambda j: self._finish(j, live))

    def _timed(self, requests: list[Req]) -> tuple[list[Res], float]:
        # Runs on the worker thread: measure compute time, not time spent queued.
        t0 = time.perf_counter()
        results = list(self._run_batch(requests))
        return results, time.perf_counter() - t0

    def _finish(self, job: "asyncio.Future[tuple[list[Res], float]]",
                live: list[tuple[Req, asyncio.Future[Res]]]) -> None:
        self._inflight -= 1
        self.batches += 1
        exc = job.exception()
        if exc is not None:
            log.error("%s batch of %d failed: %r", self.name, len(live), exc)
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            results, seconds = job.result()
            if self._on_batch is not None:
                self._on_batch(len(live), seconds)
            if len(results) != len(live):
                err = RuntimeError(f"{self.name}: {len(results)} results for {len(live)} requests")
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for (_, fut), res in zip(live, results):
                    if not fut.done():
                        fut.set_result(res)
        self._schedule()

    def fail_pending(self, reason: str) -> None:
        """Fail every waiting request (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            _, fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(Shed(reason))
