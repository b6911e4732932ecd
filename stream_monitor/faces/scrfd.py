"""SCRFD face detection (insightface 2.1) on a user-supplied ONNX model, via onnxruntime.

The model is a single SCRFD ``.onnx`` file, e.g. ``det_10g.onnx`` from insightface's
``buffalo_l`` pack (licensed for non-commercial research only; the user brings it).
Only ``insightface.model_zoo.scrfd.SCRFD`` is used, on an onnxruntime session we build:
``FaceAnalysis`` and the model-zoo router would look for, or download, model packs.

What insightface 2.1's SCRFD does with a frame (read from its ``scrfd.py``), and so what
this backend relies on:

* input: a **BGR** uint8 image; it is letterboxed (aspect kept, top-left aligned, zero
  padding) into the detector input size, then ``cv2.dnn.blobFromImage(swapRB=True)``
  makes an RGB ``[1, 3, H, W]`` float blob ``(x − 127.5) / 128``. We convert our RGB
  frames to BGR first, so the network sees RGB as trained.
* input size: without ``input_size`` 2.1 runs *two* sizes, (128, 128) and (640, 640), and
  merges them. We pass one, :data:`INPUT_SIZE` (what ``FaceAnalysis(det_size=(640, 640))``
  uses for buffalo_l); a model with a fixed input shape uses its own size instead.
* outputs (9 for 3 strides with keypoints, 15 for 5): the score maps of strides 8, 16, 32
  (…), then the box distance maps, then the keypoint offset maps, each ``[N, C]`` or
  ``[1, N, C]`` with ``N = (H/s)·(W/s)·anchors`` ordered row, column, anchor (2 anchors
  per location for 3 strides, 1 for 5); ``C`` = 1 (sigmoid score), 4 (left, top, right,
  bottom distances from the anchor centre, in stride units), 10 (five ``dx, dy`` offsets
  in stride units). Boxes and points come back divided by the letterbox scale, i.e. in
  the frame's pixels; NMS at IoU 0.4.
* keypoint order: left eye, right eye, nose, left and right mouth corner in image terms,
  the order of insightface's ``arcface_dst`` template that ``norm_crop`` fits these points
  to directly, so already ours.

One frame per ``session.run``: SCRFD's decode handles one image, and buffalo_l's export
has batch 1. Models without keypoint outputs (6 or 10 outputs) are refused: the aligners
need five points.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..config import FacesConfig
from ..errors import FaceBackendError
from ..types import FaceObs
from .detect import check_images, make_face, select_faces

log = logging.getLogger(__name__)

INPUT_SIZE = (640, 640)
"""Detector input (width, height) every frame is letterboxed into."""

_OUTPUTS_WITH_KEYPOINTS = (9, 15)
_HINT = "faces.scrfd_model must be an insightface SCRFD .onnx file with keypoints, e.g. buffalo_l's det_10g.onnx"


def onnx_providers(device: torch.device) -> list[Any]:
    """onnxruntime providers for ``device``: CUDA (on its index) then CPU, or CPU alone."""
    import onnxruntime

    if device.type == "cuda":
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
        log.warning("SCRFD: device %s asked for, but this onnxruntime has no CUDA provider; running on the CPU",
                    device)
    return ["CPUExecutionProvider"]


class ScrfdDetector:
    """insightface's SCRFD on ``model_path`` with the service's selection rule; see :mod:`.detect`."""

    def __init__(self, model_path: str | os.PathLike[str], cfg: FacesConfig, device: torch.device,
                 input_size: tuple[int, int] = INPUT_SIZE) -> None:
        path = Path(model_path)
        if not path.exists():
            raise FaceBackendError(f"SCRFD model file not found: {path}; {_HINT}")
        if not path.is_file() or not os.access(path, os.R_OK):
            raise FaceBackendError(f"SCRFD model file is not a readable file: {path}; {_HINT}")
        try:
            import onnxruntime
            from insightface.model_zoo.scrfd import SCRFD
        except ImportError as exc:
            raise FaceBackendError(f"the SCRFD backend needs onnxruntime and insightface 2.1 "
                                   f"(pip install --no-deps insightface==2.1): {exc}") from exc
        try:
            session = onnxruntime.InferenceSession(str(path), providers=onnx_providers(torch.device(device)))
        except Exception as exc:  # onnxruntime raises its own pybind error types for bad files
            raise FaceBackendError(f"cannot load SCRFD model {path}: {exc}; {_HINT}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) not in _OUTPUTS_WITH_KEYPOINTS:
            raise FaceBackendError(
                f"{path} is not an SCRFD detector with keypoints: it has {len(inputs)} input(s) "
                f"{[i.shape for i in inputs]} and {len(outputs)} outputs (expected one [1, 3, H, W] input "
                f"and {' or '.join(map(str, _OUTPUTS_WITH_KEYPOINTS))} outputs); {_HINT}")
        self.cfg = cfg
        self.model_path = path
        self.input_size = input_size
        # static_shape_sessions=False: every frame is letterboxed to one size, so the one
        # session serves it; insightface would otherwise rewrite and load the graph again
        # per input size.
        try:
            self._scrfd = SCRFD(model_file=str(path), session=session, static_shape_sessions=False)
        except Exception as exc:
            raise FaceBackendError(f"insightface SCRFD rejected {path}: {exc}; {_HINT}") from exc

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceObs]]:
        check_images(images)
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: np.ndarray) -> list[FaceObs]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        # SCRFD scores are sigmoid outputs, so its threshold is our min_confidence; it
        # drops low scores before NMS, as insightface does with det_thresh.
        dets, kpss = self._scrfd.detect(bgr, input_size=self.input_size, det_thresh=self.cfg.min_confidence)
        if kpss is None:  # cannot happen with a 9/15-output model; keeps the contract explicit
            raise FaceBackendError(f"{self.model_path} returned no keypoints; {_HINT}")
        faces = [make_face(det[:4], kps, float(det[4])) for det, kps in zip(dets, kpss)]
        return select_faces(faces, self.cfg)
