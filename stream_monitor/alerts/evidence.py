"""Evidence of incidents: what the face looked like when an alert started and ended.

For each ``start`` and ``end`` event the pipeline hands :meth:`EvidenceStore.attach` the
frame in which the event's window ended and the window itself (:class:`~stream_monitor.types.Clip`).
Two JPEGs are written under ``alerts.evidence_dir``:

- ``{alert_id}-{seq}-frame.jpg``: the whole frame with the event's ``bbox`` drawn in red;
- ``{alert_id}-{seq}-faces.jpg``: a strip of up to :data:`STRIP_MAX` of the window's face
  crops (evenly spread over the window, oldest left), each :data:`STRIP_HEIGHT` pixels high.

The event's JSON gets ``"evidence": {"frame": "/evidence/<name>", "faces": "/evidence/<name>"}``
(API paths, served by ``GET /evidence/{name}`` behind the API token); ``update`` events and
events whose files are not written (evidence off, too many writes waiting, an ``alert_id``
that is not a safe file name) carry ``"evidence": null``. The event is published at once and
the files are written afterwards by one worker thread, so an alert is never held back by
JPEG encoding or the disk; for a moment after the event its URLs may answer 404.

File names come from ``alert_id`` (the policy's own hex id, checked against :data:`_SAFE_ID`)
and ``seq`` only, never from network input, and :meth:`path` accepts nothing but names of
that form inside the directory. Retention, after every write: files older than ``max_age_s``
are deleted, then the oldest ones until the directory's evidence files total at most
``max_bytes``. Only files named like evidence are counted or deleted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..types import BBox, Clip, Frame, Patch
from .policy import AlertEvent

log = logging.getLogger(__name__)

URL_PREFIX = "/evidence/"
STRIP_MAX = 8
STRIP_HEIGHT = 112
JPEG_QUALITY = 85
MAX_PENDING = 32  # writes waiting for the thread; beyond, events go without evidence
_SAFE_ID = re.compile(r"[A-Za-z0-9_]{1,64}")
NAME = re.compile(r"(?P<alert_id>[A-Za-z0-9_]{1,64})-(?P<seq>[0-9]{1,9})-(?P<kind>frame|faces)\.jpg")
_BOX_BGR = (77, 72, 229)  # the page's alert red


def evidence_names(alert_id: str, seq: int) -> tuple[str, str] | None:
    """The (frame, faces) file names of an event, or None when ``alert_id`` is not a safe name."""
    if _SAFE_ID.fullmatch(alert_id) is None or not 0 <= seq < 10**9:
        return None
    return f"{alert_id}-{seq}-frame.jpg", f"{alert_id}-{seq}-faces.jpg"


@dataclass(frozen=True)
class _Job:
    image: np.ndarray        # uint8 RGB [H, W, 3], the frame (not modified)
    bbox: BBox               # frame pixels
    patches: list[Patch]     # uint8 RGB [h, w, 3] each
    frame_name: str
    faces_name: str


def _host(patch: Patch) -> np.ndarray:
    """A crop as a host uint8 RGB array (batched alignment keeps crops on the detector's device)."""
    if isinstance(patch, np.ndarray):
        return patch
    return np.ascontiguousarray(patch.detach().cpu().numpy())


def frame_jpeg(image: np.ndarray, bbox: BBox) -> bytes:
    """uint8 RGB ``[H, W, 3]`` with ``bbox`` (frame pixels) outlined → JPEG bytes."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in bbox)
    x1, x2 = max(0, min(x1, width - 1)), max(0, min(x2, width - 1))
    y1, y2 = max(0, min(y1, height - 1)), max(0, min(y2, height - 1))
    thickness = max(2, round(min(width, height) / 240))
    cv2.rectangle(bgr, (x1, y1), (x2, y2), _BOX_BGR, thickness)
    return _encode(bgr)


def strip_jpeg(patches: list[Patch]) -> bytes:
    """Up to :data:`STRIP_MAX` crops (uint8 RGB), evenly picked, side by side → JPEG bytes."""
    if not patches:
        raise ValueError("a window without crops")
    picks = np.linspace(0, len(patches) - 1, min(STRIP_MAX, len(patches))).round().astype(int)
    tiles = []
    for i in sorted(set(picks.tolist())):
        crop = _host(patches[i])
        h, w = crop.shape[:2]
        size = (max(1, round(w * STRIP_HEIGHT / h)), STRIP_HEIGHT)
        tiles.append(cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA))
    return _encode(cv2.hconcat(tiles))


def _encode(bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for a {bgr.shape[1]}x{bgr.shape[0]} image")
    return bytes(buf)


class EvidenceStore:
    """Writes, prunes and finds evidence files in ``directory`` (created if missing).

    :meth:`attach` is called on the event loop and returns at once; the encoding, the writes
    and the pruning run on one worker thread, in event order.
    """

    def __init__(self, directory: Path, max_bytes: int, max_age_s: float) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._root = self.directory.resolve()
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="evidence")
        self._lock = threading.Lock()
        self._pending = 0
        self.written = 0
        self.skipped = 0  # events that got no evidence because too many writes were waiting
        self.failed = 0

    def attach(self, event: AlertEvent, frame: Frame | None, clip: Clip | None) -> None:
        """Give a ``start``/``end`` event its evidence: set ``payload["evidence"]`` to the files'
        URLs and queue their writing. Anything else, or without a frame and a window, is left as is."""
        payload: dict[str, Any] = event.payload
        if event.event not in ("start", "end") or frame is None or clip is None or not clip.items:
            return
        names = evidence_names(str(payload["alert_id"]), int(payload["seq"]))
        if names is None:
            return
        with self._lock:
            if self._pending >= MAX_PENDING:
                self.skipped += 1
                log.warning("evidence: %d writes waiting; %s %s goes without", self._pending, event.event,
                            payload["alert_id"])
                return
            self._pending += 1
        bbox = tuple(float(v) for v in payload["bbox"])
        job = _Job(frame.image, bbox, [item.patch for item in clip.items], *names)  # type: ignore[arg-type]
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # closed: the service is stopping
            with self._lock:
                self._pending -= 1
            return
        payload["evidence"] = {"frame": URL_PREFIX + names[0], "faces": URL_PREFIX + names[1]}

    def path(self, name: str) -> Path | None:
        """The file of an evidence name, or None: a name not of the evidence form (no path
        separators, no dot segments), or no such file inside the directory."""
        if NAME.fullmatch(name) is None:
            return None
        path = (self._root / name).resolve()
        if path.parent != self._root or not path.is_file():
            return None
        return path

    def close(self) -> None:
        """Finish the queued writes (blocking: call it in a thread) and stop the worker."""
        self._pool.shutdown(wait=True)

    async def aclose(self, timeout: float) -> None:
        """Take no more writes and wait, on the event loop, up to ``timeout`` seconds for the
        queued ones (at most :data:`MAX_PENDING` JPEGs): a stop keeps to its grace, and the
        worker thread finishes what is left of them before the process exits."""
        self._pool.shutdown(wait=False)
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # ---------------------------------------------------------------- worker thread

    def _run(self, job: _Job) -> None:
        try:
            self._write(job.frame_name, frame_jpeg(job.image, job.bbox))
            self._write(job.faces_name, strip_jpeg(job.patches))
            self.written += 1
        except Exception as exc:  # a full disk must not kill the worker thread
            self.failed += 1
            log.error("evidence %s not written: %r", job.frame_name, exc)
        finally:
            with self._lock:
                self._pending -= 1
        try:
            self.prune()
        except OSError as exc:
            log.error("evidence: pruning %s failed: %r", self.directory, exc)

    def _write(self, name: str, data: bytes) -> None:
        # Write then rename: a reader never sees half a JPEG.
        tmp = self._root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self._root / name)

    def prune(self, now: float | None = None) -> list[str]:
        """Delete evidence older than ``max_age_s``, then the oldest until at most ``max_bytes``
        remain; the names deleted."""
        now = time.time() if now is None else now
        files: list[tuple[float, int, Path]] = []
        with os.scandir(self._root) as entries:
            for entry in entries:
                if NAME.fullmatch(entry.name) is None or not entry.is_file(follow_symlinks=False):
                    continue
                st = entry.stat(follow_symlinks=False)
                files.append((st.st_mtime, st.st_size, Path(entry.path)))
        files.sort(key=lambda f: (f[0], f[2].name))
        total = sum(size for _, size, _ in files)
        deleted = []
        for mtime, size, path in files:
            if now - mtime <= self.max_age_s and total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            deleted.append(path.name)
        return deleted
