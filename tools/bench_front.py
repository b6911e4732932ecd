"""Side-by-side timings of the front-end and layout choices the engine makes (issue 6).

    .venv/bin/python tools/bench_front.py [--device cpu|cuda] [--repeats 7] [--json out.json]

Each row times two variants of one step in the same process, alternating calls, and
reports the medians and their ratio: face detection on the full frame vs a region around
the tracked face (``faces.roi``; 720p and 1080p synthetic frames), convolution networks in
NCHW vs channels-last (``prefers_channels_last``), and the bit-exact Pillow bicubic resize
as float64 matmuls vs Pillow itself (``models.card.resize_like_pil_bicubic``). Random
weights; speed is measured here, never asserted in the tests; results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402
from models.card import resize_like_pil_bicubic  # noqa: E402
from stream_monitor.bench.presets import PRESETS  # noqa: E402
from stream_monitor.config import FacesConfig  # noqa: E402
from stream_monitor.faces.detect import create_detector  # noqa: E402
from stream_monitor.faces.roi import RegionDetector  # noqa: E402
from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec  # noqa: E402

Row = tuple[str, Callable[[], Any], Callable[[], Any]]


def _side_by_side(a: Callable[[], Any], b: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Medians (s) of ``a`` and ``b``, called alternately after one warm-up call each."""
    a(), b()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        for fn, out in ((a, ta), (b, tb)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _face_rows(device: torch.device) -> list[Row]:
    detector = create_detector(FacesConfig(), device)
    regions = RegionDetector(detector, FacesConfig())
    rows: list[Row] = []
    for width, height in ((1280, 720), (1920, 1080)):
        scene = SyntheticScene(SyntheticSpec(fps=30, width=width, height=height, faces=1))
        prior = [f.box for f in detector.detect([scene.render(0)])[0]]
        frame = scene.render(4)  # one CADDM sample (8 fps of 30) later
        rows.append((f"MTCNN {height}p: full frame | region", partial(detector.detect, [frame]),
                     partial(regions.detect, [frame], [prior])))
    return rows


def _layout_rows(device: torch.device) -> list[Row]:
    rows: list[Row] = []
    cases = [("caddm_resnet34", {}, 8), ("caddm_resnet34", PRESETS["small"]["caddm"]["overrides"], 8),
             ("caddm_efficientnet_b4", {}, 4)]
    for name, overrides, n in cases:
        nchw = models.create_model(name, **overrides).to(device).eval()
        nhwc = models.create_model(name, **overrides).to(device).eval().to(memory_format=torch.channels_last)
        x = torch.rand(n, 3, 224, 224, device=device) * 255
        xl = x.contiguous(memory_format=torch.channels_last)
        label = f"{name}{' small' if overrides else ''}, {n} frames: NCHW | channels-last"
        rows.append((label, partial(nchw, x), partial(nhwc, xl)))
    return rows


def _resize_rows(device: torch.device) -> list[Row]:
    x = (torch.rand(32, 3, 256, 256, device=device) * 255).round()
    backend = "pil" if device.type == "cpu" else "torch"
    return [(f"Pillow bicubic 256->224, 32 frames: float64 matmuls | {backend}",
             lambda: resize_like_pil_bicubic(x, 224, backend="torch"),
             lambda: resize_like_pil_bicubic(x, 224, backend=backend))]  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    with torch.inference_mode():
        for label, a, b in _face_rows(device) + _layout_rows(device) + _resize_rows(device):
            ta, tb = _side_by_side(a, b, args.repeats)
            results.append({"step": label, "a_s": round(ta, 4), "b_s": round(tb, 4), "a_over_b": round(ta / tb, 2)})
            print(f"{label:<72} {ta:8.4f} s | {tb:8.4f} s   x{ta / tb:.2f}", flush=True)
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "repeats": args.repeats}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
