"""The one thread that runs all torch work (face detection and detector batches).

Jobs are plain callables executed in submission order; each returns through a
``concurrent.futures.Future`` that the asyncio side wraps with ``asyncio.wrap_future``
(which resolves on the loop with ``call_soon_threadsafe``). A sentinel stops the thread
after the jobs already queued (aiortc's ``decoder_worker`` shape). Keeping every model
call on one thread means one CUDA stream, no lock around the models, and batches that
never compete with each other for the GPU.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
import time
from typing import Any, Callable, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()


def resolve_device(choice: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(choice)


class InferenceWorker:
    """A single daemon thread with a FIFO job queue."""

    def __init__(self, name: str = "inference", nice: int = 0) -> None:
        self._jobs: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.nice = nice
        self._started = False
        self.busy_seconds = 0.0

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, fn: Callable[[], T]) -> "concurrent.futures.Future[T]":
        """Queue ``fn`` to run on the worker thread; its result or exception lands in the future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, fut))
        return fut

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    @property
    def name(self) -> str:
        return self._thread.name

    @property
    def alive(self) -> bool:
        """The thread is running (a job, or waiting for one)."""
        return self._thread.is_alive()

    def request_stop(self) -> None:
        """End the thread after the jobs already queued; returns at once."""
        if self._started:
            self._jobs.put(_STOP)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the queued jobs, then end the thread (waits at most ``timeout`` seconds)."""
        self.request_stop()
        if self._started:
            self._thread.join(timeout)

    def _run(self) -> None:
        if self.nice > 0 and hasattr(os, "setpriority"):
            # Linux schedules threads individually, and the OpenMP threads torch starts from
            # this thread later inherit its niceness: the whole lane yields the CPU to others.
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except OSError as exc:
                log.debug("could not lower the priority of %s: %s", self._thread.name, exc)
        with torch.inference_mode():
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                fn, fut = job
                if not fut.set_running_or_notify_cancel():
                    continue
                t0 = time.perf_counter()
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # delivered to the awaiting side, which logs it
                    fut.set_exception(exc)
                finally:
                    self.busy_seconds += time.perf_counter() - t0
