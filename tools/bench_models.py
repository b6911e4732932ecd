"""Forward latency of each full-size detector on this machine (random weights, fp32).

    .venv/bin/python tools/bench_models.py [--device cpu|cuda] [--repeats 3] [--json out.json]

For each model: build at full size, warm up once, then time ``repeats`` forwards and
report the median (and min/max) in seconds, per call and per unit of work (frame or clip).
Speed is measured here, never asserted in the test suite; results go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402


def _cases(device: torch.device) -> list[tuple[str, str, int, Callable[[Any], Any]]]:
    """(model, unit, units per call, call) — inputs are random tensors of the real shapes."""
    def img(n: int, size: int, scale: float) -> torch.Tensor:
        return torch.rand(n, 3, size, size, device=device) * scale

    return [
        ("caddm_efficientnet_b4", "frame", 8, lambda m: m(img(8, 224, 255.0))),
        ("caddm_resnet34", "frame", 8, lambda m: m(img(8, 224, 255.0))),
        ("sta_clip_vitl14", "clip", 1, lambda m: m(torch.randn(1, 8, 3, 224, 224, device=device))),
        ("styleflow_psp_encoder", "frame", 4, lambda m: m(img(4, 256, 2.0) - 1.0)),
        ("styleflow_stylegru", "clip", 1, lambda m: m(torch.randn(1, 31, 9216, device=device) * 0.01)),
        ("styleflow_content", "clip", 1,
         lambda m: m(torch.randn(1, 3, 32, 224, 224, device=device), torch.randn(1, 16384, device=device))),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="model names to run (default: all)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, unit, units, call in _cases(device):
        if args.only and name not in args.only:
            continue
        model = models.create_model(name).to(device).eval()
        times = []
        with torch.inference_mode():
            call(model)  # warm-up
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                call(model)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"model": name, "unit": unit, "units_per_call": units, "median_s": med, "min_s": min(times),
                     "max_s": max(times), "median_s_per_unit": med / units})
        print(f"{name:<24} {units} {unit}(s)/call  median {med:8.3f} s  ({min(times):.3f}-{max(times):.3f})  "
              f"= {med / units:.3f} s per {unit}", flush=True)
        del model
    meta = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.platform(),
            "repeats": args.repeats}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
