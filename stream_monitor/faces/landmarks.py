"""dlib's facial landmarks on tracked faces, for the detectors' own keypoint recipes.

CADDM and StA were trained on crops cut from dlib's landmarks (frontal HOG detector, then
``shape_predictor_81_face_landmarks.dat``, whose first 68 points follow the iBUG layout):
CADDM from the eye-contour means, nose tip and mouth corners, StA from the eyelid and lip
points 37, 44, 30, 49, 55 (:data:`models.align.AUTHORS_CROPS`). A generic 5-point detector
(MTCNN, SCRFD) shifts and scales those crops by a few per cent, so with
``faces.landmarks: dlib68`` each tracked face's box goes to dlib's shape predictor and each
detector gets its authors' keypoints from the 68 points; StyleFlow keeps the detector's five
points (RetinaFace's, which MTCNN's and SCRFD's stand for) unless configured otherwise.

* **Model files.** ``dlib68``: ``shape_predictor_68_face_landmarks.dat`` from the
  ``face-recognition-models`` package (or ``faces.dlib68_model``); ``dlib81``: the authors'
  81-point file at ``faces.dlib81_model`` (then the points are exactly the authors').
  :func:`dlib68_model_path` finds the packaged file without importing that package (its
  ``__init__`` needs ``pkg_resources``, gone from recent setuptools).
* **Boxes.** The predictor was trained on boxes from dlib's HOG detector, and its output
  depends on the box. dlib's detector is slow and misses turned faces, so detection and
  tracking stay ours and each face's box is mapped to the box dlib's detector would give
  (:data:`DLIB_BOX`, calibrated with MTCNN by ``tools/dlib_box.py``; the landmark error the
  mapping leaves is in FIDELITY.md).
* **Plausibility.** dlib's fit fails visibly on some faces (glasses, three-quarter views)
  where the detector's points are still right: a fit whose eye centres are more than
  :data:`MAX_EYE_SHIFT` inter-ocular distances from the detector's eyes, or whose
  inter-ocular distance differs by more than a factor :data:`MAX_IOD_RATIO`, is rejected and
  that face's crops fall back to the detector's points (counted per stream,
  :attr:`~stream_monitor.inference.analysis.StreamAnalysis.landmark_fallbacks`).

Everything here runs on the inference worker thread, one predictor call per face, all faces
of a frame in one job (about 2–3.5 ms per face on one core, BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from ..errors import FaceBackendError
from ..types import FaceObs

log = logging.getLogger(__name__)

LandmarkSource = Literal["dlib68", "dlib81", "detector"]
# Detectors whose authors cut crops from dlib's landmarks (the rest use the detector's points
# unless detectors.<d>.landmarks names a dlib model).
DLIB_DETECTORS = frozenset({"caddm", "sta"})

DLIB68_FILE = "shape_predictor_68_face_landmarks.dat"
DLIB68_TERMS = ("dlib's 68-point model is trained on the iBUG 300-W data set, whose licence excludes commercial "
                "use; its creators ask that the model not be used in a commercial product (weights/README.md)")

# A fit is implausible when an eye centre is further than this from the detector's eye, in
# inter-ocular distances, or when the two inter-ocular distances differ by more than this factor.
MAX_EYE_SHIFT = 0.3
MAX_IOD_RATIO = 1.3


def dlib68_model_path() -> Path | None:
    """``shape_predictor_68_face_landmarks.dat`` of the installed ``face-recognition-models``
    package, or ``None`` when the package or the file is missing (the package is located
    without being imported)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / DLIB68_FILE
        if path.is_file():
            return path
    return None


def dlib_available() -> bool:
    """Whether the ``dlib`` module (``dlib-bin`` wheels) can be imported."""
    return importlib.util.find_spec("dlib") is not None


@dataclass(frozen=True)
class DlibBoxMap:
    """A face detector's box → the square box dlib's frontal (HOG) detector gives the same face.

    Centre: the five points' centroid plus ``(dx, dy)`` × the face scale; side: ``side`` ×
    the face scale; the face scale is √(w·h) of the detector's box. The centroid is steadier
    than the box centre under rotation (``tools/dlib_box.py`` compares both).
    """

    side: float
    dx: float
    dy: float

    @staticmethod
    def face_scale(face: FaceObs) -> float:
        x1, y1, x2, y2 = face.box
        return math.sqrt(max(x2 - x1, 1.0) * max(y2 - y1, 1.0))

    def box(self, face: FaceObs) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` integer pixels, as ``dlib.rectangle`` takes them."""
        s = self.face_scale(face)
        cx, cy = np.asarray(face.points, dtype=np.float64).mean(0)
        cx, cy = cx + self.dx * s, cy + self.dy * s
        half = self.side * s / 2
        return (int(round(cx - half)), int(round(cy - half)), int(round(cx + half)), int(round(cy + half)))


# Calibrated with MTCNN on the test media by tools/dlib_box.py (FIDELITY.md).
DLIB_BOX = DlibBoxMap(side=0.9469, dx=-0.0134, dy=-0.0217)


@lru_cache(maxsize=4)
def load_predictor(path: Path) -> "ShapePredictor":
    """One :class:`ShapePredictor` per file and process: the 68-point model is 100 MB and
    takes ~0.7 s to read; engines built in one process (tests, the bench) share it (dlib's
    predictor is read-only when called)."""
    return ShapePredictor(path)


class ShapePredictor:
    """dlib's shape predictor loaded from ``path`` (68 or 81 points).

    Raises :class:`FaceBackendError` (one line) when dlib is missing or the file cannot be
    read as a shape predictor.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FaceBackendError(f"shape predictor file {self.path} does not exist")
        try:
            import dlib
        except ImportError as exc:
            raise FaceBackendError(f"dlib is not installed ({exc}); pip install dlib-bin") from None
        self._dlib: Any = dlib
        try:
            self._predictor = dlib.shape_predictor(str(self.path))
        except RuntimeError as exc:
            raise FaceBackendError(f"{self.path}: not a dlib shape predictor ({exc})") from None
        probe = self._predictor(np.zeros((64, 64, 3), np.uint8), dlib.rectangle(8, 8, 56, 56))
        self.parts = int(probe.num_parts)
        if self.parts < 68:
            raise FaceBackendError(f"{self.path}: {self.parts}-point predictor; the recipes need the 68-point "
                                   f"(or 81-point) layout")

    def predict(self, image: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> list[np.ndarray]:
        """Landmarks of each box in ``image`` (uint8 RGB, as the authors feed dlib): float64
        ``[parts, 2]`` integer pixel coordinates (dlib rounds them)."""
        rgb = np.ascontiguousarray(image)
        out = []
        for left, top, right, bottom in boxes:
            shape = self._predictor(rgb, self._dlib.rectangle(int(left), int(top), int(right), int(bottom)))
            out.append(np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64))
        return out


def eye_centres(shape: np.ndarray) -> np.ndarray:
    """``[2, 2]``: the image-left and image-right eye-contour centres of a 68/81-point shape."""
    return np.stack([shape[36:42].mean(0), shape[42:48].mean(0)])


def plausible(shape: np.ndarray, face: FaceObs) -> bool:
    """Whether dlib's fit agrees with the detector's eyes (see the module docstring)."""
    eyes = eye_centres(shape)
    ours = np.asarray(face.points, dtype=np.float64)[:2]
    iod_dlib = float(np.linalg.norm(eyes[1] - eyes[0]))
    iod_det = float(np.linalg.norm(ours[1] - ours[0]))
    if iod_dlib <= 0 or iod_det <= 0:
        return False
    ratio = iod_dlib / iod_det
    if not 1 / MAX_IOD_RATIO <= ratio <= MAX_IOD_RATIO:
        return False
    return bool(np.linalg.norm(eyes - ours, axis=1).max() <= MAX_EYE_SHIFT * iod_det)


@dataclass(frozen=True)
class LandmarkFit:
    """dlib's landmarks of one face (``None``: implausible, the detector's points are used)."""

    shape: np.ndarray | None
    source: LandmarkSource


class Landmarker:
    """Which landmarks each detector's crops come from, and dlib's fits of a frame's faces.

    ``sources``: detector → ``dlib68``, ``dlib81`` or ``detector``; ``predictors``: one
    :class:`ShapePredictor` per dlib source in use. Worker thread only.
    """

    def __init__(self, sources: Mapping[str, LandmarkSource], predictors: Mapping[str, ShapePredictor],
                 box_map: DlibBoxMap = DLIB_BOX) -> None:
        missing = {s for s in sources.values() if s != "detector"} - set(predictors)
        if missing:
            raise ValueError(f"no predictor for {sorted(missing)}")
        self.sources = dict(sources)
        self.predictors = dict(predictors)
        self.box_map = box_map

    def source(self, detector: str) -> LandmarkSource:
        return self.sources.get(detector, "detector")

    def fit(self, image: np.ndarray, faces: Sequence[FaceObs], source: LandmarkSource) -> list[LandmarkFit]:
        """dlib's landmarks of ``faces`` in ``image`` with the ``source`` predictor; an
        implausible fit comes back with ``shape`` ``None``."""
        predictor = self.predictors[source]
        shapes = predictor.predict(image, [self.box_map.box(face) for face in faces])
        return [LandmarkFit(shape if plausible(shape, face) else None, source) for shape, face in zip(shapes, faces)]


def resolve_sources(faces_landmarks: LandmarkSource, per_detector: Mapping[str, LandmarkSource | None]
                    ) -> dict[str, LandmarkSource]:
    """Each enabled detector's landmark source: its own ``detectors.<d>.landmarks``, else
    ``faces.landmarks`` for CADDM and StA and ``detector`` for the others."""
    out: dict[str, LandmarkSource] = {}
    for detector, own in per_detector.items():
        out[detector] = own if own is not None else faces_landmarks if detector in DLIB_DETECTORS else "detector"
    return out


def create_landmarker(faces_landmarks: LandmarkSource, per_detector: Mapping[str, LandmarkSource | None],
                      dlib68_model: Path | None = None, dlib81_model: Path | None = None) -> Landmarker:
    """The :class:`Landmarker` for the configuration, with one log line saying what it uses.

    ``dlib68`` without dlib or without a model file (none configured, none installed) falls
    back to the detector's points with a warning, so the defaults run anywhere; a configured
    file that is missing, and ``dlib81`` without its file, raise :class:`FaceBackendError`.
    """
    sources = resolve_sources(faces_landmarks, per_detector)
    wanted = {s for s in sources.values() if s != "detector"}
    predictors: dict[str, ShapePredictor] = {}
    if "dlib68" in wanted:
        path = dlib68_model or dlib68_model_path()
        if dlib68_model is None and (path is None or not dlib_available()):
            what = "dlib" if not dlib_available() else f"{DLIB68_FILE} (face-recognition-models)"
            log.warning("faces.landmarks: dlib68 needs %s, which is not installed (pip install dlib-bin "
                        "face-recognition-models); every detector's crops use the face detector's five points", what)
            sources = {d: "detector" if s == "dlib68" else s for d, s in sources.items()}
        else:
            assert path is not None
            predictors["dlib68"] = load_predictor(Path(path))
    if "dlib81" in wanted:
        if dlib81_model is None:
            raise FaceBackendError("faces.landmarks dlib81 needs faces.dlib81_model: the path of the authors' "
                                   "shape_predictor_81_face_landmarks.dat")
        predictors["dlib81"] = load_predictor(Path(dlib81_model))
    by_source: dict[str, list[str]] = {}
    for detector, source in sorted(sources.items()):
        by_source.setdefault(source, []).append(detector)
    summary = "; ".join(f"{', '.join(ds)}: {s}" + (f" ({predictors[s].path})" if s in predictors else
                                                  " (the face detector's five points)")
                        for s, ds in sorted(by_source.items()))
    log.info("faces.landmarks: %s", summary)
    if "dlib68" in predictors and any(s == "dlib68" for s in sources.values()):
        log.info("faces.landmarks: %s", DLIB68_TERMS)
    return Landmarker(sources, predictors)
