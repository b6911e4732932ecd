"""``synthetic:`` source: a moving-face video generated from a public-domain photo.

URL form (every parameter optional)::

    synthetic:                                   # = synthetic:astronaut
    synthetic:astronaut?fps=25&size=640x480&faces=1&seconds=0

- ``astronaut``: scikit-image's ``data.astronaut()`` (Eileen Collins, NASA, public domain),
  shipped inside the scikit-image wheel, so nothing is downloaded.
- ``fps``: frame rate, 1..120 (default 25).
- ``size``: ``WIDTHxHEIGHT`` in pixels, 64..4096 each (default 640x480).
- ``faces``: 1 or 2; the second face is a mirror image of the first (default 1).
- ``seconds``: length; 0 means endless (default 0).

The head is cut out of the photo with a feathered elliptical mask, scaled so the face is
about 30 % of the frame height (MTCNN finds it easily), and pasted on a plain background.
Each head glides along its own slow Lissajous path (periods of 8 s and 5.5 s), so
consecutive face boxes overlap strongly and trackers keep their ids. The source paces
frames in real time and is ``live`` (unless ``ingest.realtime`` is off); it is ``finite``
only when ``seconds > 0``.

:func:`synthetic_frames` is the pure generator behind it (no clock, no I/O): tests use it
to write media files, and :meth:`SyntheticScene.face_boxes` gives the true face boxes.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import parse_qsl

import cv2
import numpy as np

from ..errors import SourceError
from ..types import BBox, Frame

# Region of astronaut() holding the head and a little neck, (x1, y1, x2, y2) in its pixels,
# and the face box MTCNN finds in that photo (p = 0.99999), used for scaling and ground truth.
_HEAD = (145, 8, 310, 200)
_FACE = (181.0, 62.0, 268.0, 172.0)
FACE_HEIGHT_FRACTION = 0.30
_BACKGROUND_RGB = (92, 112, 140)
_PERIODS_S = (8.0, 5.5)


def _astronaut() -> np.ndarray:
    from skimage import data  # imported lazily: only this source needs scikit-image

    return np.ascontiguousarray(data.astronaut()[..., :3])


_IMAGES: dict[str, Callable[[], np.ndarray]] = {"astronaut": _astronaut}


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic video (see the module docstring for ranges)."""

    image: str = "astronaut"
    fps: float = 25.0
    width: int = 640
    height: int = 480
    faces: int = 1
    seconds: float = 0.0

    @property
    def frame_count(self) -> int | None:
        """Frames in the video, or None when endless."""
        return None if self.seconds <= 0 else max(1, round(self.seconds * self.fps))


def parse_synthetic_url(url: str) -> SyntheticSpec:
    """``synthetic:NAME?k=v&...`` -> :class:`SyntheticSpec`; raises SourceError on anything unknown."""
    if not url.startswith("synthetic:"):
        raise SourceError(f"{url!r} is not a synthetic: URL")
    body = url[len("synthetic:"):].lstrip("/")
    name, _, query = body.partition("?")
    name = name or "astronaut"
    if name not in _IMAGES:
        raise SourceError(f"{url}: unknown synthetic image {name!r} (available: {', '.join(sorted(_IMAGES))})")
    values: dict[str, float | int | str] = {"image": name}
    try:
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
            if key == "fps":
                values["fps"] = float(value)
            elif key == "size":
                w, h = value.lower().split("x")
                values["width"], values["height"] = int(w), int(h)
            elif key == "faces":
                values["faces"] = int(value)
            elif key == "seconds":
                values["seconds"] = float(value)
            else:
                raise SourceError(f"{url}: unknown parameter {key!r} (use fps, size, faces, seconds)")
    except ValueError as exc:
        raise SourceError(f"{url}: bad parameter value ({exc}); e.g. synthetic:astronaut?fps=25&size=640x480"
                          f"&faces=1&seconds=0") from exc
    spec = SyntheticSpec(**values)  # type: ignore[arg-type]
    if not 1 <= spec.fps <= 120 or not 64 <= spec.width <= 4096 or not 64 <= spec.height <= 4096:
        raise SourceError(f"{url}: fps must be 1..120 and each side of size 64..4096")
    if spec.faces not in (1, 2) or spec.seconds < 0 or not math.isfinite(spec.seconds):
        raise SourceError(f"{url}: faces must be 1 or 2 and seconds >= 0 (0 = endless)")
    return spec


class SyntheticScene:
    """Renders frame ``i`` of a :class:`SyntheticSpec` (uint8 RGB ``[height, width, 3]``)."""

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        photo = _IMAGES[spec.image]()
        x1, y1, x2, y2 = _HEAD
        head = photo[y1:y2, x1:x2].astype(np.float32)
        scale = FACE_HEIGHT_FRACTION * spec.height / (_FACE[3] - _FACE[1])
        # Two heads share the width; shrink rather than let them overlap or leave the frame.
        scale = min(scale, 0.95 * spec.width / spec.faces / head.shape[1], 0.95 * spec.height / head.shape[0])
        pw, ph = max(1, round(head.shape[1] * scale)), max(1, round(head.shape[0] * scale))
        self._scale = (pw / head.shape[1], ph / head.shape[0])
        patch = cv2.resize(head, (pw, ph), interpolation=cv2.INTER_AREA)
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        r = np.sqrt(((xx + 0.5) / pw * 2 - 1) ** 2 + ((yy + 0.5) / ph * 2 - 1) ** 2)
        alpha = np.clip((1.0 - r) / 0.12, 0.0, 1.0)[..., None]  # feathered ellipse edge
        self._patches = [(patch, alpha), (patch[:, ::-1].copy(), alpha[:, ::-1].copy())][: spec.faces]
        self._background = np.empty((spec.height, spec.width, 3), np.uint8)
        self._background[:] = _BACKGROUND_RGB

    def _origins(self, index: int) -> list[tuple[int, int]]:
        t = index / self.spec.fps
        ph, pw = self._patches[0][0].shape[:2]
        lane_w = self.spec.width / self.spec.faces
        out = []
        for k in range(self.spec.faces):
            free_x, free_y = max(0.0, lane_w - pw), max(0.0, self.spec.height - ph)
            phase = k * math.pi / 2
            fx = 0.5 + 0.5 * math.sin(2 * math.pi * t / _PERIODS_S[0] + phase)
            fy = 0.5 + 0.5 * math.sin(2 * math.pi * t / _PERIODS_S[1] + 2 * phase + 1.0)
            out.append((round(k * lane_w + fx * free_x), round(fy * free_y)))
        return out

    def render(self, index: int) -> np.ndarray:
        """Frame ``index`` (time ``index / fps``), uint8 RGB ``[height, width, 3]``."""
        frame = self._background.copy()
        for (patch, alpha), (x, y) in zip(self._patches, self._origins(index)):
            h, w = patch.shape[:2]
            region = frame[y:y + h, x:x + w].astype(np.float32)
            frame[y:y + h, x:x + w] = (alpha * patch + (1.0 - alpha) * region + 0.5).astype(np.uint8)
        return frame

    def face_boxes(self, index: int) -> list[BBox]:
        """True face boxes ``(x1, y1, x2, y2)`` in frame pixels at frame ``index``, one per face."""
        sx, sy = self._scale
        fx1, fy1, fx2, fy2 = (_FACE[0] - _HEAD[0]) * sx, (_FACE[1] - _HEAD[1]) * sy, \
            (_FACE[2] - _HEAD[0]) * sx, (_FACE[3] - _HEAD[1]) * sy
        pw = self._patches[0][0].shape[1]
        boxes: list[BBox] = []
        for k, (x, y) in enumerate(self._origins(index)):
            if k == 1:  # the mirrored copy: the box flips horizontally inside the patch
                fx1, fx2 = pw - fx2, pw - fx1
            boxes.append((x + fx1, y + fy1, x + fx2, y + fy2))
        return boxes


def synthetic_frames(spec: SyntheticSpec | None = None, count: int | None = None) -> Iterator[np.ndarray]:
    """Frames 0, 1, ... of ``spec`` as uint8 RGB arrays, as fast as they render (no pacing).

    ``count`` defaults to ``spec.frame_count``; both None means endless.
    """
    scene = SyntheticScene(spec or SyntheticSpec())
    n = count if count is not None else scene.spec.frame_count
    i = 0
    while n is None or i < n:
        yield scene.render(i)
        i += 1


class SyntheticSource:
    """A :class:`~stream_monitor.ingest.base.Source` playing a synthetic video.

    ``realtime`` (``ingest.realtime``, the default): paced at ``fps`` and ``live`` (under
    load the consumer drops the oldest frames), like a camera. Without it, frames come as
    fast as they render and the source is not live: the consumer applies backpressure and
    no frame is lost (``stream-monitor bench --pace unpaced`` measures capacity this way).
    """

    def __init__(self, stream_id: str, url: str, realtime: bool = True) -> None:
        self.stream_id = stream_id
        self.spec = parse_synthetic_url(url)
        self.finite = self.spec.seconds > 0
        self.live = realtime
        self._closed = threading.Event()

    def frames(self) -> Iterator[Frame]:
        """Frames paced at ``fps`` on the wall clock when live (else as fast as they render);
        pts = index / fps. Returns at the end or on close()."""
        scene = SyntheticScene(self.spec)
        period = 1.0 / self.spec.fps
        n = self.spec.frame_count
        start = time.monotonic()
        i = 0
        while (n is None or i < n) and not self._closed.is_set():
            image = scene.render(i)
            if not self.live:
                yield Frame(self.stream_id, i, i * period, time.time(), image)
                i += 1
                continue
            due = start + i * period
            lag = time.monotonic() - due
            if lag > 0.5:
                # Fell behind (busy CPU): a camera would not burst the backlog out; rebase the clock.
                start += lag
            elif lag < 0 and self._closed.wait(-lag):
                return
            yield Frame(self.stream_id, i, i * period, time.time(), image)
            i += 1

    def close(self) -> None:
        """Ask frames() to return; safe from any thread."""
        self._closed.set()
