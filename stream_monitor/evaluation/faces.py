"""A face detector that first looks in the evaluation's face cache (:class:`~.cache.FaceStore`).

It wraps the engine's real backend and keeps its contract (:mod:`stream_monitor.faces.detect`):
the same images give the same faces, whether found now or stored by an earlier run. Only
the images not in the store go to the backend, as one batch, and their faces are stored.
Region detection (:mod:`stream_monitor.faces.roi`) works through it unchanged: a region
call is keyed by the region's pixels and its smallest face size.
"""

from __future__ import annotations

from typing import Callable, Sequence, cast

import numpy as np

from ..faces.detect import FaceDetector
from ..faces.roi import RegionCapable
from ..types import FaceObs
from .cache import FaceStore, image_digest


class CachedFaceDetector:
    """``inner`` behind ``store``; counts ``hits`` and ``misses`` (images)."""

    def __init__(self, inner: FaceDetector, store: FaceStore) -> None:
        self.inner = inner
        self.store = store
        self.supports_regions = bool(getattr(inner, "supports_regions", False))
        self.hits = 0
        self.misses = 0

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceObs]]:
        return self._cached(images, "full", self.inner.detect)

    def detect_sized(self, images: Sequence[np.ndarray], min_face: float) -> list[list[FaceObs]]:
        inner = cast(RegionCapable, self.inner)  # called only when supports_regions (RegionDetector.enabled)
        return self._cached(images, f"sized:{float(min_face):.6g}", lambda batch: inner.detect_sized(batch, min_face))

    def _cached(self, images: Sequence[np.ndarray], call: str,
                run: Callable[[Sequence[np.ndarray]], list[list[FaceObs]]]) -> list[list[FaceObs]]:
        keys = [self.store.key(image_digest(image), call) for image in images]
        found = self.store.get_many(keys)
        todo = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(images) - len(todo)
        self.misses += len(todo)
        if todo:
            fresh = run([images[i] for i in todo])
            self.store.put_many((keys[i], faces) for i, faces in zip(todo, fresh))
            for i, faces in zip(todo, fresh):
                found[keys[i]] = faces
        return [list(found[k]) for k in keys]
