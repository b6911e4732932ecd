"""The alert outbox: events waiting for Redis, in order, bounded in memory, durable on disk.

Contract of :class:`Outbox`:

- ``append(event)`` never blocks on the network; events leave in the order they came
  (``peek(n)`` the oldest n, ``pop(events)`` once delivered).
- At most ``memory_max`` events are held in memory. With a ``spool`` path, more events go to
  that append-only file (one JSON line each: the payload and ``last_arrival``), fsynced on each
  write, and come back into memory in order as memory drains; while the spool holds events,
  new ones are appended behind them, so the order is kept.
- Without a spool (or when the spool cannot be written), a full outbox drops an ``update``
  before any ``start`` or ``end`` (the oldest update; the oldest event only when there is no
  update left); every drop is counted with its reason (``overflow``, ``spool_error``) by the
  ``on_drop`` callback.
- ``persist()`` (at shutdown) moves what memory holds in front of the spool and fsyncs it;
  a new Outbox on the same spool file replays it first (``restored``). A spool line that cannot
  be read (a torn write at a crash) is skipped and counted (``corrupt_spool``).
"""

from __future__ import annotations

import json
import logging
import os
from collections import deque
from pathlib import Path
from typing import Callable, Iterable

from .policy import AlertEvent

log = logging.getLogger(__name__)

DropCallback = Callable[[AlertEvent | None, str], None]


def _line(event: AlertEvent) -> bytes:
    return (json.dumps({"payload": event.payload, "last_arrival": event.last_arrival},
                       separators=(",", ":")) + "\n").encode()


def _parse(line: bytes) -> AlertEvent | None:
    try:
        record = json.loads(line)
        return AlertEvent(dict(record["payload"]), float(record["last_arrival"]))
    except (ValueError, KeyError, TypeError):
        return None


class Outbox:
    """Ordered events for one sink (see the module docstring)."""

    def __init__(self, memory_max: int, spool: Path | None = None,
                 on_drop: DropCallback = lambda event, reason: None) -> None:
        self.memory_max = memory_max
        self.spool = spool
        self._on_drop = on_drop
        self._memory: deque[AlertEvent] = deque()
        self._spooled = 0  # events in the spool file not yet read back
        self._read_at = 0  # byte offset of the next unread spool line
        self.restored = 0
        if spool is not None:
            spool.parent.mkdir(parents=True, exist_ok=True)
            self.restored = self._count_spool()

    def __len__(self) -> int:
        return len(self._memory) + self._spooled

    # ------------------------------------------------------------------ in

    def append(self, event: AlertEvent) -> None:
        if self._spooled == 0 and len(self._memory) < self.memory_max:
            self._memory.append(event)
            return
        if self.spool is not None:
            try:
                self._write_spool([event])
                self._spooled += 1
                return
            except OSError as exc:
                log.error("alert spool %s cannot be written (%s): dropping events from memory", self.spool, exc)
                self._make_room("spool_error")
                self._memory.append(event)
                return
        self._make_room("overflow")
        self._memory.append(event)

    def _make_room(self, reason: str) -> None:
        victim = next((e for e in self._memory if e.event == "update"), None)
        if victim is None and self._memory:
            victim = self._memory[0]
        if victim is not None:
            self._memory.remove(victim)
        self._on_drop(victim, reason)

    # ------------------------------------------------------------------ out

    def peek(self, n: int) -> list[AlertEvent]:
        """The oldest ``n`` events (fewer if fewer wait), refilling memory from the spool."""
        self._refill()
        return [self._memory[i] for i in range(min(n, len(self._memory)))]

    def pop(self, events: Iterable[AlertEvent]) -> None:
        """Remove delivered events (the head of the outbox, matched by identity)."""
        for event in events:
            if self._memory and self._memory[0] is event:
                self._memory.popleft()
            else:  # dropped to make room while it was being sent
                try:
                    self._memory.remove(event)
                except ValueError:
                    pass

    def _refill(self) -> None:
        if self.spool is None or self._spooled == 0 or len(self._memory) >= self.memory_max // 2 + 1:
            return
        try:
            with open(self.spool, "rb") as f:
                f.seek(self._read_at)
                while self._spooled and len(self._memory) < self.memory_max:
                    line = f.readline()
                    if not line:
                        self._spooled = 0
                        break
                    self._read_at += len(line)
                    if not line.strip():
                        continue
                    self._spooled -= 1
                    event = _parse(line)
                    if event is None:
                        self._on_drop(None, "corrupt_spool")
                        continue
                    self._memory.append(event)
        except OSError as exc:
            log.error("alert spool %s cannot be read (%s)", self.spool, exc)
            return
        if self._spooled == 0:
            self._truncate()

    # ------------------------------------------------------------------ disk

    def persist(self) -> int:
        """Write every waiting event to the spool (memory first, then the unread spool lines),
        fsynced, replacing the file atomically. Returns how many are kept; 0 without a spool."""
        if self.spool is None:
            return 0
        rest = b""
        if self._spooled:
            with open(self.spool, "rb") as f:
                f.seek(self._read_at)
                rest = f.read()
        tmp = self.spool.with_suffix(self.spool.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(_line(e) for e in self._memory) + rest)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.spool)
        kept = len(self._memory) + self._spooled
        self._spooled, self._read_at = kept, 0
        self._memory.clear()
        return kept

    def _write_spool(self, events: list[AlertEvent]) -> None:
        assert self.spool is not None
        with open(self.spool, "ab") as f:
            f.write(b"".join(_line(e) for e in events))
            f.flush()
            os.fsync(f.fileno())

    def _truncate(self) -> None:
        assert self.spool is not None
        try:
            with open(self.spool, "wb") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            log.error("alert spool %s cannot be emptied (%s)", self.spool, exc)
        self._read_at = 0

    def _count_spool(self) -> int:
        assert self.spool is not None
        try:
            with open(self.spool, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return 0
        if data and not data.endswith(b"\n"):
            # A write torn by a crash: end its line, so the next append starts a line of its own.
            with open(self.spool, "ab") as f:
                f.write(b"\n")
        count = sum(1 for line in data.split(b"\n") if line.strip())
        self._spooled = count
        if count:
            log.info("alert spool %s: %d events from an earlier run will be delivered first", self.spool, count)
        return count
