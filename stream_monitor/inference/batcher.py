"""Size-or-deadline batching of requests from all streams into worker jobs, fair per stream.

A :class:`Batcher` is one lane (face detection, or one detector) shared by every stream.
Its contract:

* **Per-stream FIFO.** Requests are keyed by ``key(request)`` (default: the request's
  ``stream_id``; requests without one share a single queue) and each key has its own FIFO.
  A stream's requests run in submission order, within a batch and across batches — the
  face lane relies on it (a stream's tracker must see its frames in order).
* **Size or deadline.** A batch is released when ``max_batch`` requests wait in total, or
  when the oldest waiting request *overall* has waited ``max_wait_s``, whichever comes
  first. At most ``max_inflight`` batches are on the worker at a time; while they run,
  new requests accumulate, so batches grow with load instead of piling up jobs.
* **Round-robin across streams.** A batch takes one request from each waiting stream in
  turn, and the turn continues where the previous batch stopped: with at most
  ``max_batch`` busy streams every stream with work has a request in every batch, and
  with more each waits at most ``ceil(streams / max_batch)`` batches. One stream with a
  deep backlog fills only the slots the others leave empty.
* **Shedding the busiest stream.** When more than ``max_pending`` requests wait, the
  oldest request of the stream with the most waiting (ties: the one whose oldest request
  is oldest) is shed: its future fails with :class:`Shed` and ``on_shed(request)`` is
  called, so the caller counts it per stream and stage. A flooding stream sheds its own
  backlog (oldest first: for live video the newest frames matter most) and cannot push
  the other streams' work out.
* **Shedding by age.** With ``max_age_s``, a request that has waited longer than that when
  a batch is formed is shed the same way (counted), so under sustained overload the
  queueing delay — and the alert latency — stays bounded by ``max_age_s`` instead of
  growing until ``max_pending`` is reached (a backlog of slow windows can take minutes).
* **Work that must not be lost.** A request submitted with ``sheddable=False`` (a source
  that is not live: its producer waits for results instead) is never shed, by count or
  by age; such producers bound their own backlog.
* **Faults stay with their request.** ``run_batch`` returns one result per request, in
  order; an element that is an exception instance is that request's failure (the face lane
  returns one for a stream whose tracking raised, so the other streams of the batch keep
  theirs). When ``run_batch`` raises, the batch is split in halves and each half run again,
  recursively down to single requests: only the request(s) that raise alone get the
  exception, every other request gets its result. Each request that ends in an exception
  calls ``on_error(kind, exc)`` (:func:`failure_kind`).
* **Out of device memory.** A batch that raises :class:`torch.cuda.OutOfMemoryError` empties
  torch's CUDA cache, and the lane's batch size (:attr:`Batcher.max_batch`) drops to half of
  that batch (at least 1); the batch is rerun in pieces of that size (halved again if a
  piece runs out too), so its requests still get results. Each such event calls
  ``on_error("oom", exc)``; a single request that runs out of memory alone fails with it.
  After ``grow_after`` consecutive full batches without a failure the batch size doubles,
  back up to the configured ``max_batch`` (a batch smaller than the limit proves nothing).
* **Health.** :attr:`Batcher.failing_since` is when the lane's current run of failures
  began: set by a batch in which every request failed, cleared by any result. With
  :attr:`Batcher.last_error` it tells the engine (``/readyz``) that a lane has produced
  nothing for a while, which a failing model otherwise does silently.

Everything here runs on the asyncio loop; only ``run_batch`` runs on the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generic, Hashable, NamedTuple, Sequence, TypeVar

import torch

from .worker import InferenceWorker

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")


class Shed(Exception):
    """The request was dropped under overload before it ran."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is torch running out of device memory (the type exists without CUDA too)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def failure_kind(exc: BaseException) -> str:
    """The ``kind`` label a failed request is counted under: ``"oom"`` for out of device
    memory, the exception's own ``kind`` attribute when it has a string one (the engine's
    per-stream analysis failure: ``"tracking"``), else ``"error"``."""
    if is_oom(exc):
        return "oom"
    kind = getattr(exc, "kind", None)
    return kind if isinstance(kind, str) else "error"


def _free_device_memory() -> None:
    # What the OOM left cached is released before the smaller retries; a no-op without CUDA.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@dataclass
class _Run(Generic[Res]):
    """One batch's run on the worker thread, handed back to the loop."""

    limit: int | None = None  # the batch size the OOMs left (None: no OOM)
    ooms: list[BaseException] = field(default_factory=list)
    outcomes: list["Res | BaseException"] = field(default_factory=list)
    seconds: float = 0.0


def stream_of(request: object) -> Hashable:
    """The default fairness key: the request's ``stream_id`` (``None`` when it has none)."""
    return getattr(request, "stream_id", None)  # type: ignore[no-any-return]


class _Waiting(NamedTuple, Generic[Req, Res]):
    request: Req
    future: "asyncio.Future[Res]"
    since: float  # time.monotonic() at submit
    sheddable: bool = True


class Batcher(Generic[Req, Res]):
    """One batching lane feeding ``run_batch`` (executed on the worker thread)."""

    def __init__(self, name: str, worker: InferenceWorker,
                 run_batch: Callable[[list[Req]], Sequence["Res | BaseException"]], *,
                 max_batch: int = 8, max_wait_s: float = 0.05, max_pending: int = 256, max_inflight: int = 1,
                 max_age_s: float | None = None, on_batch: Callable[[int, float], None] | None = None,
                 on_shed: Callable[[Req], None] | None = None,
                 on_error: Callable[[str, BaseException], None] | None = None,
                 key: Callable[[Req], Hashable] = stream_of, grow_after: int = 16) -> None:
        if max_batch < 1 or max_pending < max_batch or max_inflight < 1 or max_wait_s < 0 or \
                (max_age_s is not None and max_age_s <= 0) or grow_after < 1:
            raise ValueError(f"bad batcher settings for {name}")
        self.name = name
        self._worker = worker
        self._run_batch = run_batch
        self.max_batch = max_batch  # now: lowered after an out-of-memory batch, grown back later
        self.configured_batch = max_batch
        self.grow_after = grow_after
        self._full_ok = 0  # consecutive full batches without a failure since max_batch last changed
        self.max_wait_s = max_wait_s
        self.max_pending = max_pending
        self.max_inflight = max_inflight
        self.max_age_s = max_age_s
        self._on_batch = on_batch
        self._on_shed = on_shed
        self._on_error = on_error
        self._key = key
        self._queues: dict[Hashable, deque[_Waiting[Req, Res]]] = {}
        # Keys with waiting requests, in turn order: the head contributes first to the next batch.
        # Invariant: a key is in the ring exactly when its queue exists (and is non-empty).
        self._ring: deque[Hashable] = deque()
        self._total = 0
        self._inflight = 0
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        self.shed = 0
        self.failing_since: float | None = None  # time.monotonic() of the current run of failures
        self.last_error: str | None = None  # repr of the latest failure (not the exception: its frames hold tensors)
        self._logged: str | None = None  # the error whose traceback was logged last

    @property
    def pending(self) -> int:
        """Requests waiting, all streams together."""
        return self._total

    def submit(self, request: Req, sheddable: bool = True) -> "asyncio.Future[Res]":
        """Queue a request; the returned future resolves with its result (or :class:`Shed`,
        never for ``sheddable=False``)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Res] = loop.create_future()
        k = self._key(request)
        queue = self._queues.get(k)
        if queue is None:
            queue = self._queues[k] = deque()
            self._ring.append(k)  # a newly busy stream takes its turn after those already waiting
        queue.append(_Waiting(request, fut, time.monotonic(), sheddable))
        self._total += 1
        while self._total > self.max_pending and self._shed_one():
            pass
        self._schedule()
        return fut

    def _shed_one(self) -> bool:
        """Shed the busiest stream's oldest request; False when nothing waiting may be shed."""
        # The busiest stream pays; among equals, the one holding the oldest request. O(streams),
        # and only under overload. A stream's requests are all sheddable or all not (one source).
        candidates = [s for s, q in self._queues.items() if q[0].sheddable]
        if not candidates:
            return False
        k = max(candidates, key=lambda s: (len(self._queues[s]), -self._queues[s][0].since))
        self._shed(self._pop(k))
        return True

    def _shed_expired(self) -> None:
        """Shed every sheddable request older than ``max_age_s`` (heads of the per-stream FIFOs)."""
        if self.max_age_s is None:
            return
        limit = time.monotonic() - self.max_age_s
        for k in list(self._queues):
            while k in self._queues and self._queues[k][0].sheddable and self._queues[k][0].since < limit:
                self._shed(self._pop(k))

    def _shed(self, old: _Waiting[Req, Res]) -> None:
        self.shed += 1
        if not old.future.done():
            old.future.set_exception(Shed(f"{self.name}: shed under overload"))
        if self._on_shed is not None:
            self._on_shed(old.request)

    def _pop(self, k: Hashable) -> _Waiting[Req, Res]:
        """The oldest request of ``k``; forgets the key when its queue empties."""
        queue = self._queues[k]
        item = queue.popleft()
        self._total -= 1
        if not queue:
            del self._queues[k]
            self._ring.remove(k)
        return item

    def _oldest_since(self) -> float:
        return min(q[0].since for q in self._queues.values())

    def _schedule(self) -> None:
        if not self._total or self._inflight >= self.max_inflight:
            return
        if self._total >= self.max_batch:
            self._release()
            return
        if self._timer is None:
            waited = time.monotonic() - self._oldest_since()
            delay = max(0.0, self.max_wait_s - waited)
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        if self._total and self._inflight < self.max_inflight:
            self._release()
        else:
            self._schedule()

    def _take(self) -> list[_Waiting[Req, Res]]:
        """Up to ``max_batch`` requests, one per stream in turn, resuming where the last batch stopped."""
        batch: list[_Waiting[Req, Res]] = []
        while self._ring and len(batch) < self.max_batch:
            k = self._ring.popleft()
            queue = self._queues[k]
            batch.append(queue.popleft())
            self._total -= 1
            if queue:
                self._ring.append(k)
            else:
                del self._queues[k]
        return batch

    def _release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._shed_expired()
        live = [w for w in self._take() if not w.future.cancelled()]
        if not live:
            self._schedule()
            return
        self._inflight += 1
        requests = [w.request for w in live]
        futures = [w.future for w in live]
        job = asyncio.wrap_future(self._worker.submit(lambda: self._timed(requests)))
        job.add_done_callback(lambda j: self._finish(j, futures))

    def _timed(self, requests: list[Req]) -> _Run[Res]:
        # Runs on the worker thread: measure compute time, not time spent queued.
        run: _Run[Res] = _Run()
        t0 = time.perf_counter()
        run.outcomes = self._isolated(requests, run)
        run.seconds = time.perf_counter() - t0
        return run

    def _isolated(self, requests: list[Req], run: _Run[Res]) -> list["Res | BaseException"]:
        """One outcome per request: ``run_batch``'s, or where it raised, the halves' (worker thread)."""
        if run.limit is not None and len(requests) > run.limit:
            # An earlier OOM of this batch: no use trying more at once than what it left.
            out: list[Res | BaseException] = []
            while len(out) < len(requests):
                out += self._isolated(requests[len(out):len(out) + run.limit], run)
            return out
        try:
            results = list(self._run_batch(requests))
        except Exception as exc:  # noqa: BLE001 - whatever a model raises belongs to its request(s)
            failure: Exception = exc
        else:
            if len(results) != len(requests):
                err = RuntimeError(f"{self.name}: {len(results)} results for {len(requests)} requests")
                return [err] * len(requests)
            return results
        # Out of the except block: the failed batch's frames (and their tensors) are no longer
        # held by the exception being handled.
        if is_oom(failure):
            # Its traceback's frames hold the batch's activations: drop them, then the cache.
            failure.__traceback__ = None
            run.ooms.append(failure)
            _free_device_memory()
            run.limit = max(1, len(requests) // 2)
        if len(requests) == 1:
            return [failure]
        if run.limit is not None and len(requests) > run.limit:
            return self._isolated(requests, run)
        half = (len(requests) + 1) // 2
        return self._isolated(requests[:half], run) + self._isolated(requests[half:], run)

    def _finish(self, job: "asyncio.Future[_Run[Res]]", futures: list["asyncio.Future[Res]"]) -> None:
        self._inflight -= 1
        self.batches += 1
        exc = job.exception()
        if exc is not None:  # not an Exception (run_batch's are caught on the worker): fail them all
            run: _Run[Res] = _Run(outcomes=[exc] * len(futures))
        else:
            run = job.result()
        for oom in run.ooms:
            self._count("oom", oom)
        failed = [o for o in run.outcomes if isinstance(o, BaseException)]
        if self._on_batch is not None and len(failed) < len(futures):
            self._on_batch(len(futures), run.seconds)
        for fut, outcome in zip(futures, run.outcomes):
            if isinstance(outcome, BaseException):
                if not is_oom(outcome):  # an OOM was counted where it happened
                    self._count(failure_kind(outcome), outcome)
                if not fut.done():
                    fut.set_exception(outcome)
            elif not fut.done():
                fut.set_result(outcome)
        if failed:
            error = repr(failed[-1])
            # The traceback once per distinct error until a clean batch: a lane failing on every
            # batch would flood the log with the same one.
            log.error("%s: %d of %d requests failed: %s", self.name, len(failed), len(futures), error,
                      exc_info=failed[-1] if error != self._logged else None)
            self.last_error = self._logged = error
        else:
            self._logged = None
        if len(failed) < len(futures):
            self.failing_since = None
        elif self.failing_since is None:
            self.failing_since = time.monotonic()
        self._adapt(len(futures), run, bool(failed))
        self._schedule()

    def _count(self, kind: str, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(kind, exc)

    def _adapt(self, size: int, run: _Run[Res], failed: bool) -> None:
        """Lower the batch size after an OOM; double it back after ``grow_after`` full batches."""
        if run.limit is not None:
            if run.limit < self.max_batch:
                log.warning("%s: out of device memory in a batch of %d; batches of at most %d now (%r)",
                            self.name, size, run.limit, run.ooms[-1])
                self.max_batch = run.limit
            self._full_ok = 0
        elif failed or self.max_batch >= self.configured_batch:
            self._full_ok = 0
        elif size >= self.max_batch:
            self._full_ok += 1
            if self._full_ok >= self.grow_after:
                self.max_batch = min(self.configured_batch, 2 * self.max_batch)
                self._full_ok = 0
                log.info("%s: batches of up to %d again", self.name, self.max_batch)

    def fail_pending(self, reason: str) -> None:
        """Fail every waiting request (shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._ring:
            fut = self._pop(self._ring[0]).future
            if not fut.done():
                fut.set_exception(Shed(reason))
