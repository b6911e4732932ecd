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

Keypoints: either the authors' own five points, computed from dlib's landmarks by their
recipe (``keypoints`` given; ``faces.landmarks``, :mod:`stream_monitor.faces.landmarks`), or
the face detector's five points moved towards the authors' convention
(``template.keypoint_offsets``; see the cards' ``mapping`` text for how far apart they are).
Per-frame crops are fitted and warped in each author's exact arithmetic
(:func:`models.align.frame_matrix`, :func:`models.align.warp_crop`: CADDM's composed
``warpPerspective``, StA's float32 scikit-image fit), so on the host a crop equals the
authors' preprocessing of the same frame and keypoints bit for bit (FIDELITY.md).
Images are uint8 RGB ``[H, W, 3]``; crops are uint8 RGB ``[S, S, 3]``.

Two ways to warp (``faces.align_device``, resolved by
:func:`stream_monitor.inference.analysis.resolve_align_device`):

* **OpenCV on the host** (:meth:`Aligner.patch`, :meth:`Aligner.clip_crops`): one
  OpenCV warp per crop, the authors' warps bit for bit; crops are NumPy arrays and
  the runners upload them per batch. Faster than torch on a CPU.
* **Batched on the device** (:meth:`Aligner.patches`, :meth:`Aligner.clip_tensor` with a
  ``device``): the frame is uploaded once (pinned memory, non-blocking on CUDA) and every
  crop of one per-frame template in it comes from one :func:`models.align.warp_affine`
  call; a per-clip window's context regions are padded (black) into one tensor, uploaded
  once and warped in one call. Crops stay on the device (torch uint8 ``[S, S, 3]``). The
  torch warp uses exact bilinear weights where OpenCV quantises them to 1/32, so crops
  differ from OpenCV's by a few grey levels at most (``tests/stream_monitor/test_device_align.py``).
"""

from __future__ import annotations

from typing import Sequence, cast

import cv2
import numpy as np
import torch

from models.align import adapt_keypoints, fit_template, frame_matrix, warp_affine, warp_crop
from models.card import AlignTemplate

from ..types import BBox, FaceObs, Patch, WindowItem


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array as a tensor on ``device``: no copy on a CPU; on CUDA through pinned
    memory with a non-blocking copy (ordered on the current stream, so later kernels see it)."""
    t = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def stack_on_device(patches: Sequence[Patch], device: torch.device) -> torch.Tensor:
    """``[N, ...]`` uint8 on ``device`` from window patches of either kind: ``torch.stack`` of
    device crops (the device path's, already there), or ``np.stack`` and one upload of host
    arrays (the OpenCV path's)."""
    if any(isinstance(p, torch.Tensor) for p in patches):
        return torch.stack([p.to(device) if isinstance(p, torch.Tensor) else to_device(p, device) for p in patches])
    return to_device(np.stack(cast(Sequence[np.ndarray], patches)), device)


def _host(patch: Patch) -> np.ndarray:
    return patch if isinstance(patch, np.ndarray) else patch.cpu().numpy()


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
    """Cuts window items for one detector template and assembles its clips' crops.

    ``device``: where :meth:`clip_tensor` warps a per-clip window's regions (batched torch);
    ``None``: with OpenCV on the host. :meth:`patch` and :meth:`clip_crops` are always
    OpenCV (the reference, and what the bench's baseline of the authors' loops uses).
    """

    def __init__(self, template: AlignTemplate, device: torch.device | None = None) -> None:
        self.template = template
        self.device = device

    def keypoints(self, face: FaceObs, keypoints: np.ndarray | None = None) -> np.ndarray:
        """The five points a crop of ``face`` is fitted to: ``keypoints`` (the authors' own,
        from dlib's landmarks) when given, else the detector's points moved by the
        template's ``keypoint_offsets``. float64 ``[5, 2]``."""
        if keypoints is not None:
            return np.asarray(keypoints, dtype=np.float64)
        offsets = self.template.keypoint_offsets
        return adapt_keypoints(face.points.astype(np.float64), None if offsets is None else np.asarray(offsets))

    def matrix(self, face: FaceObs, keypoints: np.ndarray | None = None) -> np.ndarray:
        """Per-frame templates: the ``[3, 3]`` frame → crop matrix of ``face``, in the
        authors' arithmetic (:func:`models.align.frame_matrix`)."""
        return frame_matrix(self.keypoints(face, keypoints), self.template)

    def patch(self, image: np.ndarray, face: FaceObs,
              keypoints: np.ndarray | None = None) -> tuple[np.ndarray, tuple[int, int]]:
        """What a window item keeps of this frame for this face: ``(pixels, origin)``.

        Per-frame templates: the aligned crop, origin ``(0, 0)``, fitted to ``keypoints``
        (the authors' five points) or to the detector's adapted points
        (:meth:`keypoints`). Per-clip templates: a copy of the context region
        (``box_scale``, default 2×) and its top-left corner (``keypoints`` go into the
        window item, where the clip fit reads them).
        """
        t = self.template
        if not t.per_clip:
            return warp_crop(image, self.matrix(face, keypoints), t), (0, 0)
        h, w = image.shape[:2]
        x1, y1, x2, y2 = context_box(face.box, t.box_scale or 2.0, w, h)
        return np.ascontiguousarray(image[y1:y2, x1:x2]), (x1, y1)

    def patches(self, frame: torch.Tensor, faces: Sequence[FaceObs],
                keypoints: Sequence[np.ndarray | None] | None = None) -> torch.Tensor:
        """Per-frame templates, batched: the aligned crops of ``faces`` in one frame.

        ``frame``: uint8 RGB ``[H, W, 3]`` tensor, uploaded once by the caller and shared by
        every template. ``keypoints``: per face, the authors' five points or ``None`` (the
        detector's, as in :meth:`patch`). Returns uint8 RGB ``[N, S, S, 3]`` on
        ``frame.device`` from one :func:`~models.align.warp_affine` call (no per-crop copy
        of the frame); each crop matches :meth:`patch`'s within a few grey levels (the
        torch warp's exact bilinear weights against OpenCV's 1/32-quantised ones).
        """
        t = self.template
        if t.per_clip:
            raise ValueError(f"{t.name}: per-clip templates keep context regions (patch), not crops")
        if not faces:
            return torch.zeros(0, t.size, t.size, 3, dtype=torch.uint8, device=frame.device)
        kps = list(keypoints) if keypoints is not None else [None] * len(faces)
        # The torch warp is affine: CADDM's perspective row (1e-9, 1e-9, 1 - 1e-6) is dropped (< 0.001 px).
        m = np.stack([self.matrix(face, kp)[:2] for face, kp in zip(faces, kps)])
        return warp_affine(frame[None], m, t.size)

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
            return np.stack([_host(item.patch) for item in items])  # device crops are downloaded
        m = self.clip_transform(items) if transform is None else transform
        assert m is not None
        out = {}
        for item in {id(item): item for item in items}.values():
            # The clip transform maps frame pixels; the region starts at its origin.
            shifted = m.copy()
            shifted[:, 2] += m[:, :2] @ np.asarray(item.patch_origin, dtype=np.float64)
            out[id(item)] = cv2.warpAffine(_host(item.patch), shifted, (t.size, t.size), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return np.stack([out[id(item)] for item in items])

    def clip_tensor(self, items: Sequence[WindowItem], device: torch.device,
                    transform: np.ndarray | None = None) -> torch.Tensor:
        """The window's crops as the runners feed them: uint8 RGB ``[T, S, S, 3]`` on ``device``.

        Per-frame templates: the items' patches stacked there (device crops or host arrays,
        :func:`stack_on_device`). Per-clip templates with an aligner ``device``: the clip's
        distinct context regions are padded with black into one ``[U, H_max, W_max, 3]``
        tensor, uploaded once and warped in one call with the clip transform shifted to each
        region's origin; black padding reads as OpenCV's black border, so pixels outside each
        frame's region stay black. Without: :meth:`clip_crops` (OpenCV) and one upload.
        """
        t = self.template
        if not t.per_clip:
            return stack_on_device([item.patch for item in items], device)
        if self.device is None:
            return to_device(self.clip_crops(items, transform), device)
        m = self.clip_transform(items) if transform is None else transform
        assert m is not None
        unique = list({id(item): item for item in items}.values())  # padded clips repeat items
        regions = [_host(item.patch) for item in unique]
        height = max(1, max(r.shape[0] for r in regions))
        width = max(1, max(r.shape[1] for r in regions))
        canvas = torch.zeros(len(unique), height, width, 3, dtype=torch.uint8,
                             pin_memory=self.device.type == "cuda")
        for k, region in enumerate(regions):
            canvas[k, :region.shape[0], :region.shape[1]] = torch.from_numpy(region)
        origins = np.asarray([item.patch_origin for item in unique], dtype=np.float64)  # [U, 2] x, y
        shifted = np.repeat(m[None], len(unique), axis=0)
        shifted[:, :, 2] += origins @ m[:, :2].T
        crops = warp_affine(canvas.to(self.device, non_blocking=True), shifted, t.size)
        row = {id(item): k for k, item in enumerate(unique)}
        index = torch.tensor([row[id(item)] for item in items], device=crops.device)
        return crops.index_select(0, index).to(device)
