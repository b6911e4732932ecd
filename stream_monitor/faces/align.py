"""Alignment of tracked faces onto each detector's template (the model cards' data).

Two regimes, chosen by ``template.per_clip``:

* **Per frame** (CADDM, StA): the similarity is fitted from this frame's five points and
  the aligned crop is cut at once; the window item keeps only the crop
  (``template.size``² × 3 bytes), not the frame.
* **Per clip** (StyleFlow): the authors fit one transform to the points of all frames of
  a clip and paste each frame's *context box* (the face box grown by
  ``(box_scale − 1)/2`` of its size per side, rounded and clipped as FTCN's
  ``get_crop_box`` does) on a black canvas. The item keeps that context region and its
  origin; :meth:`Aligner.clip_crops` fits the clip transform when the window is complete
  and warps every region with it, so pixels outside each frame's own box are black, as
  in training.

Generic 5-point detections are moved towards the authors' keypoint convention first
(``template.keypoint_offsets``; see the cards' ``mapping`` text for how far apart they are).
Images are uint8 RGB ``[H, W, 3]``; crops are uint8 RGB ``[S, S, 3]``.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from models.align import fit_template
from models.card import AlignTemplate

from ..types import BBox, FaceObs, WindowItem


def context_box(box: BBox, scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """FTCN's crop box: grow each side by ``(scale − 1)/2`` of the box size, clip, round."""
    x1, y1, x2, y2 = (float(np.rint(v)) for v in box)
    grow = (scale - 1.0) / 2.0
    dx, dy = grow * (x2 - x1), grow * (y2 - y1)
    nx1 = int(np.rint(np.clip(x1 - dx, 0, width - 1)))
    ny1 = int(np.rint(np.clip(y1 - dy, 0, height - 1)))
    nx2 = int(np.rint(np.clip(x2 + dx, 0, width - 1)))
    ny2 = int(np.rint(np.clip(y2 + dy, 0, height - 1)))
    return nx1, ny1, nx2, ny2


class Aligner:
    """Cuts window items for one detector template and assembles its clips' crops."""

    def __init__(self, template: AlignTemplate) -> None:
        self.template = template

    def patch(self, image: np.ndarray, face: FaceObs) -> tuple[np.ndarray, tuple[int, int]]:
        """What a window item keeps of this frame for this face: ``(pixels, origin)``.

        Per-frame templates: the aligned crop, origin ``(0, 0)``. Per-clip templates: a
        copy of the context region (``box_scale``, default 2×) and its top-left corner.
        """
        t = self.template
        if not t.per_clip:
            m = fit_template(face.points[None].astype(np.float64), t)[0]
            crop = cv2.warpAffine(image, m, (t.size, t.size), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            return crop, (0, 0)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = context_box(face.box, t.box_scale or 2.0, w, h)
        return np.ascontiguousarray(image[y1:y2, x1:x2]), (x1, y1)

    def clip_transform(self, items: Sequence[WindowItem]) -> np.ndarray | None:
        """The clip's frame→crop similarity ``[2, 3]`` for per-clip templates, else ``None``.

        Fitted over every item, repeats of a reflect-padded clip included (as the
        authors' padded clips are fitted).
        """
        if not self.template.per_clip:
            return None
        return fit_template(np.stack([item.points for item in items]).astype(np.float64), self.template)

    def clip_crops(self, items: Sequence[WindowItem], transform: np.ndarray | None = None) -> np.ndarray:
        """uint8 RGB ``[T, S, S, 3]`` crops of a window, in item order.

        Per-clip templates warp each item's context region with ``transform`` (fitted by
        :meth:`clip_transform` when not given); each distinct item is warped once.
        """
        t = self.template
        if not t.per_clip:
            return np.stack([item.patch for item in items])
        m = self.clip_transform(items) if transform is None else transform
        assert m is not None
        out = {}
        for item in {id(item): item for item in items}.values():
            # The clip transform maps frame pixels; the region starts at its origin.
            shifted = m.copy()
            shifted[:, 2] += m[:, :2] @ np.asarray(item.patch_origin, dtype=np.float64)
            out[id(item)] = cv2.warpAffine(item.patch, shifted, (t.size, t.size), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.stack([out[id(item)] for item in items])
