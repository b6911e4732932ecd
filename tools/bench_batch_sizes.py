"""Batch sizes from :mod:`stream_monitor.batch_sizes` against one batch of any size, CPU.

    python tools/bench_batch_sizes.py [--repeat 15] [--threads 2]

Two rows per batch size ``n``, measured alternately in one run, medians of ``--repeat``:

* **MTCNN, face detection of ``n`` frames** (640×480, scikit-image's moving astronaut, as in
  ``tools/bench_landmarks.py``): facenet-pytorch's ``MTCNN.detect`` on one ``n``-frame stack
  (R- and O-net batches of whatever number of candidates each call has) against
  :class:`~stream_monitor.faces.mtcnn.MtcnnDetector` (power-of-two stacks, R/O-net batches
  padded to :func:`~stream_monitor.batch_sizes.padded_size`). Each call takes the next ``n`` frames of a 40-frame pool, so the
  candidate counts change from call to call as they do live, and each kernel oneDNN has to
  compile for a new shape is paid where it is met.
* **CADDM forward, full size** (``caddm_resnet34``, random weights, ``[n, 3, 224, 224]``):
  one forward of ``n`` frames against the power-of-two parts the CPU runner uses (steady
  state: the same shapes every call).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_landmarks import moving_frames  # noqa: E402
from models import create_model  # noqa: E402
from stream_monitor.batch_sizes import power_of_two_parts  # noqa: E402
from stream_monitor.config import FacesConfig  # noqa: E402
from stream_monitor.faces.mtcnn import MtcnnDetector  # noqa: E402


def alternate_ms(fns: dict[str, Callable[[int], object]], repeat: int) -> dict[str, float]:
    """Median wall time (ms) of each function, called alternately ``repeat`` times (call ``i``)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(i)
            times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 5, 6, 7, 8])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    frames, _ = moving_frames(40)

    from facenet_pytorch import MTCNN
    plain = MTCNN(keep_all=True, device="cpu", post_process=False, min_face_size=40, select_largest=False).eval()
    ours = MtcnnDetector(FacesConfig(min_size=40, batch_size=8), torch.device("cpu"))
    caddm = create_model("caddm_resnet34").eval()

    print("| frames | MTCNN, facenet as is (ms) | MTCNN, our batch sizes (ms) | ratio | CADDM one batch (ms) "
          "| CADDM power-of-two parts (ms) | ratio |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        def window(i: int) -> list[np.ndarray]:
            start = (i * n) % (len(frames) - n)
            return frames[start:start + n]

        def facenet(i: int) -> object:
            with torch.inference_mode():
                return plain.detect(np.stack(window(i)), landmarks=True)

        face = alternate_ms({"one": facenet, "pow2": lambda i: ours.detect(window(i))}, args.repeat)
        x = torch.randn(n, 3, 224, 224)

        def one(_: int) -> object:
            with torch.inference_mode():
                return caddm(x)

        def parts(_: int) -> object:
            with torch.inference_mode():
                return [caddm(x[p]) for p in power_of_two_parts(n)]

        one(0), parts(0)  # the shapes' kernels compiled before timing: steady state
        det = alternate_ms({"one": one, "pow2": parts}, args.repeat)
        print(f"| {n} | {face['one']:.1f} | {face['pow2']:.1f} | {face['pow2'] / face['one']:.2f} "
              f"| {det['one']:.1f} | {det['pow2']:.1f} | {det['pow2'] / det['one']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
