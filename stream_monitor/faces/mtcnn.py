"""MTCNN face detection (facenet-pytorch 2.5.3), the default backend: works offline.

The P-, R- and O-net weights (``pnet.pt``, ``rnet.pt``, ``onet.pt``, 2 MB) ship inside the
facenet-pytorch wheel and are read from there; nothing is downloaded.

Batching: facenet-pytorch runs its three stages over a whole ``[B, H, W, 3]`` stack at
once (one image pyramid, per-image NMS), but only for images of one size. So frames are
grouped by ``(H, W)`` and each group goes through ``MTCNN.detect`` in chunks of
``cfg.batch_size``; results come back in input order.

Landmark order: MTCNN's O-net regresses left eye, right eye, nose, left mouth corner,
right mouth corner in *image* terms (the first point has the smaller x on an upright
frontal face, i.e. the subject's right eye), as x in outputs 0-4 and y in 5-9, which
facenet-pytorch stacks into ``[N, 5, 2]`` (x, y) pixels. That is already our order
(:mod:`stream_monitor.types`); ``tests/stream_monitor/test_faces_detect.py`` checks it on
a real face.

Batch sizes on the CPU, where oneDNN compiles a kernel per input shape
(:mod:`stream_monitor.batch_sizes`): a chunk of frames is split into power-of-two stacks, and
the R- and O-nets, whose batch is the number of candidate boxes (different on nearly every
call), run on zero-padded batches of a few sizes (:class:`PaddedBatches`). The padding rows
are cut off again; every layer of these nets works per sample, so the real rows' outputs do
not depend on them. On a GPU both run as facenet-pytorch runs them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..batch_sizes import frame_parts, padded_size
from ..config import FacesConfig
from ..errors import FaceBackendError
from ..types import FaceObs
from .detect import check_images, make_face, select_faces


class PaddedBatches(torch.nn.Module):
    """``net`` run on batches zero-padded to :func:`padded_size`, its outputs cut back to ``n``.

    For a net whose every output is ``[n, ...]`` and whose rows do not depend on each other
    (MTCNN's R- and O-nets: convolutions, PReLU, a linear layer, softmax over classes).
    Input ``[n, 3, S, S]`` float32; outputs as the net's, a tuple of ``[n, ...]`` tensors.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = int(batch.shape[0])
        size = padded_size(n)
        if size > n:
            batch = torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
        return tuple(out[:n] for out in self.net(batch))


def _float32(value: Any) -> np.ndarray:
    # numpy 2: MTCNN.detect builds its results with dtype=object (ragged per-image lists),
    # and ufuncs such as np.round then fail on the Python floats inside. Cast first.
    return np.asarray(value, dtype=np.float32)


class MtcnnDetector:
    """facenet-pytorch's MTCNN with the service's selection rule; see :mod:`.detect`.

    ``min_face_size`` is ``cfg.min_size``: the image pyramid then starts at the scale
    where a ``min_size`` face is 12 px (P-net's window), which also makes it cheaper.
    MTCNN's own stage thresholds stay at their defaults (0.6, 0.7, 0.7); the final
    O-net probability is then held to ``cfg.min_confidence``.
    """

    def __init__(self, cfg: FacesConfig, device: torch.device) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as exc:
            raise FaceBackendError(f"the MTCNN backend needs facenet-pytorch 2.5.3 (pip install --no-deps "
                                   f"facenet-pytorch==2.5.3): {exc}") from exc
        self.cfg = cfg
        self.device = torch.device(device)
        # keep_all: every face, not one per image; post_process only affects crops, which we
        # do not ask for; select_largest=False keeps facenet's order by probability.
        self._mtcnn = MTCNN(keep_all=True, device=self.device, post_process=False, min_face_size=cfg.min_size,
                            select_largest=False)
        if self.device.type == "cpu":  # facenet's detect_face calls these two by attribute: see PaddedBatches
            self._mtcnn.rnet = PaddedBatches(self._mtcnn.rnet)
            self._mtcnn.onet = PaddedBatches(self._mtcnn.onet)
        self._mtcnn.eval()

    supports_regions = True  # detect_sized: see stream_monitor.faces.roi

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceObs]]:
        return self._detect(images, float(self.cfg.min_size), lambda faces: select_faces(faces, self.cfg))

    def detect_sized(self, images: Sequence[np.ndarray], min_face: float) -> list[list[FaceObs]]:
        """As :meth:`detect`, with the pyramid starting where a ``min_face`` pixel face is
        P-net's 12 px, and only ``faces.min_confidence`` applied (region detection selects
        in frame pixels afterwards)."""
        floor = self.cfg.min_confidence
        return self._detect(images, max(float(min_face), 12.0), lambda faces: [f for f in faces if f.score >= floor])

    def _detect(self, images: Sequence[np.ndarray], min_face: float,
                select: Callable[[list[FaceObs]], list[FaceObs]]) -> list[list[FaceObs]]:
        check_images(images)
        out: list[list[FaceObs]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[(int(image.shape[0]), int(image.shape[1]))].append(i)
        # Set per call: the worker thread is the only caller, one call at a time.
        self._mtcnn.min_face_size = min_face
        for (height, width), indices in groups.items():
            # No face of min_face fits, and facenet's pyramid would be empty (it then fails
            # on torch.cat of nothing).
            if min(height, width) < min_face:
                continue
            for start in range(0, len(indices), self.cfg.batch_size):
                batch = indices[start:start + self.cfg.batch_size]
                for part in frame_parts(len(batch), self.device.type):
                    chunk = batch[part]
                    found = self._detect_stack(np.stack([images[i] for i in chunk]), select)
                    for i, faces in zip(chunk, found):
                        out[i] = faces
        return out

    def _detect_stack(self, stack: np.ndarray,
                      select: Callable[[list[FaceObs]], list[FaceObs]]) -> list[list[FaceObs]]:
        """Faces of each image of a uint8 ``[B, H, W, 3]`` stack, selected."""
        with torch.inference_mode():
            boxes, probs, points = self._mtcnn.detect(stack, landmarks=True)
        result: list[list[FaceObs]] = []
        for b in range(stack.shape[0]):
            if boxes[b] is None:
                result.append([])
                continue
            bx = _float32(boxes[b]).reshape(-1, 4)
            pr = _float32(probs[b]).reshape(-1)
            pt = _float32(points[b]).reshape(-1, 5, 2)
            faces = [make_face(bx[k], pt[k], float(pr[k])) for k in range(bx.shape[0])]
            result.append(select(faces))
        return result
