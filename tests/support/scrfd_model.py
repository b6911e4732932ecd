"""An ONNX model shaped like insightface's SCRFD (buffalo_l's det_10g.onnx), built at test time.

The real detector cannot be downloaded here. This one has the same interface, which is
what insightface 2.1's ``SCRFD`` reads: one input ``input.1`` ``[1, 3, H, W]`` (H, W
dynamic; RGB, ``(x − 127.5) / 128``) and nine outputs in the order score 8/16/32,
bbox 8/16/32, kps 8/16/32, each ``[N, C]`` (or ``[1, N, C]`` when ``batched``) with
``N = (H/s)·(W/s)·2`` rows ordered grid row, grid column, anchor; ``C`` = 1, 4 (left,
top, right, bottom distances in stride units) and 10 (five ``dx, dy`` in stride units).

Instead of a network it writes :data:`FACES` into those maps: each face sits on one anchor
with a fixed box and five points; its score is a constant, or for ``score=None`` a
function of the input colour, ``sigmoid(4 · (mean(R) − mean(B)))`` over the normalised
blob, so a red frame scores ≈1 and a blue one ≈0 (this catches RGB/BGR mix-ups).
:func:`expected_faces` gives where a correct decoder must put them in a frame.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32)
ANCHORS = 2
DET_SIZE = 640  # the backend's letterbox (640, 640)


@dataclass(frozen=True)
class EncodedFace:
    stride: int
    col: int
    row: int
    anchor: int
    ltrb: tuple[float, float, float, float]  # box edges' distances from the anchor centre, detector pixels
    score: float | None  # None: colour-dependent

    def offsets(self) -> np.ndarray:
        """Five points relative to the anchor centre (detector pixels), in our order."""
        l, t, r, b = self.ltrb
        w, h = l + r, t + b
        return np.array([[-0.2 * w, -0.1 * h], [0.2 * w, -0.1 * h], [0.0, 0.05 * h],
                         [-0.15 * w, 0.25 * h], [0.15 * w, 0.25 * h]], np.float32)


FACES = (
    EncodedFace(16, 10, 12, 1, (64, 80, 64, 80), None),  # 128x160 detector px, centre (160, 192)
    EncodedFace(8, 50, 20, 0, (40, 48, 40, 48), 0.9),  # 80x96, centre (400, 160)
    EncodedFace(32, 15, 10, 1, (12, 14, 12, 14), 0.9),  # 24x28, centre (480, 320); ties with the one above
    # Near the origin, so it also exists in a 128x128 input: a decoder that runs insightface
    # 2.1's default second size (128, 128) finds it twice, at two places.
    EncodedFace(8, 3, 2, 1, (8, 10, 8, 10), 0.8),  # 16x20, centre (24, 16)
)


class _FakeScrfd(nn.Module):
    def __init__(self, batched: bool) -> None:
        super().__init__()
        self.batched = batched

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        colour = torch.sigmoid(4.0 * (x[:, 0].mean() - x[:, 2].mean()))
        maps: dict[str, list[torch.Tensor]] = {"score": [], "bbox": [], "kps": []}
        for stride in STRIDES:
            cell = F.avg_pool2d(x[:, :1], stride, stride)  # [1, 1, H/s, W/s]: the grid, dynamic size
            ones = torch.ones_like(cell)
            col, row = torch.cumsum(ones, 3) - 1, torch.cumsum(ones, 2) - 1
            per_anchor = {name: [torch.zeros_like(cell).repeat(1, c, 1, 1) for _ in range(ANCHORS)]
                          for name, c in (("score", 1), ("bbox", 4), ("kps", 10))}
            for face in FACES:
                if face.stride != stride:
                    continue
                hit = ((col == face.col) & (row == face.row)).float()
                a = face.anchor
                per_anchor["score"][a] = per_anchor["score"][a] + hit * (colour if face.score is None else face.score)
                ltrb = torch.tensor(face.ltrb, dtype=torch.float32).view(1, 4, 1, 1) / stride
                per_anchor["bbox"][a] = per_anchor["bbox"][a] + hit * ltrb
                kps = torch.from_numpy(face.offsets().reshape(10)).view(1, 10, 1, 1) / stride
                per_anchor["kps"][a] = per_anchor["kps"][a] + hit * kps
            for name, channels in (("score", 1), ("bbox", 4), ("kps", 10)):
                t = torch.stack(per_anchor[name], 1)  # [1, A, C, h, w]
                t = t.permute(0, 3, 4, 1, 2).reshape(1, -1, channels)  # rows: grid row, column, anchor
                maps[name].append(t if self.batched else t[0])
        return (*maps["score"], *maps["bbox"], *maps["kps"])


def export_fake_scrfd(path: Path, batched: bool = False) -> Path:
    """Write the fake SCRFD to ``path`` with the legacy (TorchScript) ONNX exporter."""
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(_FakeScrfd(batched), (torch.zeros(1, 3, 64, 96),), str(path), input_names=["input.1"],
                          output_names=names, dynamic_axes={"input.1": {2: "h", 3: "w"}}, dynamo=False,
                          opset_version=17)
    return path


def colour_score(rgb: tuple[int, int, int], width: int, height: int) -> float:
    """The colour-dependent score for a uniform frame of colour ``rgb`` after letterboxing."""
    scale = min(DET_SIZE / width, DET_SIZE / height)
    covered = round(width * scale) * round(height * scale) / DET_SIZE ** 2
    diff = covered * (rgb[0] - rgb[2]) / 128.0  # the zero padding is equal in R and B
    return 1.0 / (1.0 + math.exp(-4.0 * diff))


def expected_faces(width: int, height: int, rgb: tuple[int, int, int]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(box [4], points [5, 2], score) of every encoded face in a ``width`` x ``height`` frame."""
    scale = min(DET_SIZE / width, DET_SIZE / height)  # frame px -> detector px
    out = []
    for face in FACES:
        centre = np.array([face.col * face.stride, face.row * face.stride], np.float32)
        l, t, r, b = face.ltrb
        box = np.array([centre[0] - l, centre[1] - t, centre[0] + r, centre[1] + b], np.float32) / scale
        points = (centre + face.offsets()) / scale
        score = colour_score(rgb, width, height) if face.score is None else face.score
        out.append((box, points, score))
    return out
