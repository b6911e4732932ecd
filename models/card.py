"""Model cards: each detector's input contract, output contract and checkpoint metadata.

A card is data beside the model (``model.card``). The monitor reads everything it needs
from it: which alignment template to warp crops onto, how often to sample a track's
frames, how many frames a window holds and how far windows step, and ``preprocess`` to
turn aligned crops into the model's input tensor exactly as the authors' pipelines do.

Conventions shared by every card:

* Aligned crops handed to ``preprocess`` are **uint8, RGB, channels-last**
  ``[..., H, W, 3]`` at ``template.size`` (a torch tensor or a NumPy array). The card's
  ``preprocess`` swaps to BGR where the authors feed BGR.
* Every model's ``forward`` returns the **fake probability in [0, 1]**, shape ``[N]``.
* Template points are listed image-left eye, image-right eye, nose tip, image-left mouth
  point, image-right mouth point (the subject's right side first), in output pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import numpy as np
import torch
from PIL import Image

Points5 = tuple[tuple[float, float], tuple[float, float], tuple[float, float],
                tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class AlignTemplate:
    """Where five facial points land in the aligned crop, and how the authors fit it.

    ``points`` are in pixels of a ``size``×``size`` crop. ``fit`` names the solver of
    :mod:`models.align` that reproduces the authors' (``"umeyama"``: least squares in the
    crop, as skimage and CADDM; ``"cp2tform"``: least squares from crop to frame, then
    inverted, as FTCN/StyleFlow). ``per_clip`` means one transform is fitted to the points
    of all frames of a clip (StyleFlow); otherwise each frame has its own.
    ``keypoint_offsets`` (unit inter-ocular distance, x along the eye line towards the
    image right, y down) move generic 5-point detections (eye centres, nose tip, mouth
    corners) towards the authors' own keypoint convention; ``None`` means use them as
    they are. ``box_scale``: pixels outside the face box scaled by this factor about its
    centre are black before warping (StyleFlow pastes 2× boxes on a black canvas).
    """

    name: str
    size: int
    points: Points5
    fit: Literal["umeyama", "cp2tform"]
    per_clip: bool
    keypoints: str
    mapping: str
    keypoint_offsets: Points5 | None = None
    box_scale: float | None = None

    def points_at(self, size: int) -> np.ndarray:
        """Template points rescaled to a ``size``×``size`` crop, float64 ``[5, 2]``."""
        return np.asarray(self.points, dtype=np.float64) * (size / self.size)


@dataclass(frozen=True)
class CheckpointSpec:
    """One checkpoint file a detector needs.

    ``part`` names the sub-model the file feeds (``"model"`` for single-file detectors,
    ``"psp_encoder"``/``"stylegru"``/``"content"`` for StyleFlow). ``sha256`` is ``None``
    until the authors' file has been seen; verification then only checks loadability.
    """

    filename: str
    part: str
    source: str
    licence: str
    layout: str
    sha256: str | None = None


@dataclass(frozen=True)
class ModelCard:
    """Input contract, output contract and checkpoint metadata of one detector.

    Sampling: ``sample_fps`` is the rate, in frames per second of stream time, at which
    the monitor takes a track's frames for this detector (``None``: every decoded frame).
    A window holds ``window_len`` sampled frames and the next window starts
    ``window_stride`` sampled frames later. ``clip_len`` is how many frames one forward
    pass takes (1 for a per-frame model, whose window score is the mean of its frames'
    probabilities, as the authors' video score is). ``consecutive``: the model was trained
    on clips of consecutive frames (its temporal features difference neighbouring frames),
    so a window must never skip one: the monitor then samples every n-th source frame, the
    whole n nearest ``sample_fps``, and makes windows only of unbroken runs of them.
    """

    name: str
    family: str
    paper: str
    code: str
    template: AlignTemplate
    input_size: int
    colour_order: Literal["RGB", "BGR"]
    value_range: tuple[float, float]
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    clip_len: int
    window_len: int
    window_stride: int
    sample_fps: float | None
    sampling: str
    checkpoints: tuple[CheckpointSpec, ...]
    preprocess: Callable[[torch.Tensor | np.ndarray], torch.Tensor] = field(compare=False, repr=False)
    output: str = "fake probability in [0, 1], float32 tensor of shape [N]"
    notes: str = ""
    consecutive: bool = False

    @property
    def per_frame(self) -> bool:
        """True when every frame is scored on its own (results cacheable per frame)."""
        return self.clip_len == 1


def as_uint8_tensor(crops: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Crops as a uint8 torch tensor (no copy for a contiguous NumPy array)."""
    t = torch.from_numpy(np.ascontiguousarray(crops)) if isinstance(crops, np.ndarray) else crops
    if t.dtype != torch.uint8:
        raise TypeError(f"aligned crops must be uint8, got {t.dtype}")
    if t.ndim < 3 or t.shape[-1] != 3:
        raise ValueError(f"aligned crops must be [..., H, W, 3] RGB, got shape {tuple(t.shape)}")
    return t


_PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit resampling


def _pil_bicubic_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's bicubic resampling matrix ``[out_size, in_size]`` for 8-bit images.

    Same construction as Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc``: Keys
    cubic with a = -0.5 (torch's bicubic uses -0.75), support widened by the scale when
    downsampling, taps normalised to sum 1, then rounded to 22-bit fixed point. The
    entries are integers (multiples of 2^-22 times 2^22), so applying them in float64 is exact.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        taps = []
        for x in range(xmin, xmax):
            t = abs((x - center + 0.5) / filterscale)
            if t < 1.0:
                w = (1.5 * t - 2.5) * t * t + 1.0
            elif t < 2.0:
                w = (((t - 5.0) * t + 8.0) * t - 4.0) * -0.5
            else:
                w = 0.0
            taps.append(w)
        total = sum(taps)
        for x, w in zip(range(xmin, xmax), taps):
            w = w / total if total != 0.0 else w
            fixed = w * (1 << _PIL_PRECISION_BITS)
            weights[xx, x] = float(int(fixed - 0.5) if w < 0 else int(fixed + 0.5))
    return weights


def resize_like_pil_bicubic(x: torch.Tensor, size: int,
                            backend: Literal["auto", "torch", "pil"] = "auto") -> torch.Tensor:
    """Resize ``[N, C, H, W]`` uint8-valued floats exactly like ``PIL.Image.resize(BICUBIC)``.

    ``torch``: bit-exact with Pillow on 8-bit RGB — horizontal pass, round and clip to 0–255,
    vertical pass, round and clip, with Pillow's fixed-point taps (see
    :func:`_pil_bicubic_weights`) — as two float64 matmuls on the input's device (the GPU
    path). ``pil``: Pillow itself, frame by frame (3-channel CPU tensors only; ≈10× faster
    than float64 matmuls on a CPU). ``auto``: ``pil`` for 3-channel CPU tensors, else
    ``torch``. Returns float32 in 0–255 on the input's device.
    """
    n, c, h, w = x.shape
    if h == size and w == size:
        return x
    if backend == "pil" or (backend == "auto" and x.device.type == "cpu" and c == 3):
        return _resize_with_pil(x, size)
    one = float(1 << _PIL_PRECISION_BITS)
    half = float(1 << (_PIL_PRECISION_BITS - 1))
    y = x.to(torch.float64)
    if w != size:
        wh = _pil_bicubic_weights(w, size).to(y.device)
        y = torch.floor((y @ wh.T + half) / one).clamp_(0, 255)
    if h != size:
        wv = _pil_bicubic_weights(h, size).to(y.device)
        y = torch.floor((wv @ y + half) / one).clamp_(0, 255)
    return y.to(torch.float32)


def _resize_with_pil(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.device.type != "cpu" or x.shape[1] != 3:
        raise ValueError(f"the pil backend takes 3-channel CPU tensors, not {x.shape[1]} on {x.device}")
    frames = x.detach().round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BICUBIC)) for f in frames])
    return torch.from_numpy(out).permute(0, 3, 1, 2).float()


def normalize_crops(crops: torch.Tensor | np.ndarray, *, crop_size: int, input_size: int,
                    colour_order: Literal["RGB", "BGR"], scale: float,
                    mean: Sequence[float] | None, std: Sequence[float] | None) -> torch.Tensor:
    """uint8 RGB ``[..., crop_size, crop_size, 3]`` → float32 ``[..., 3, input_size, input_size]``.

    Steps, in the authors' order: resize (Pillow's bicubic, bit-exact) if ``input_size`` differs,
    swap to BGR if asked, divide by ``scale`` (255 for ToTensor, 1 for raw 0–255), then
    ``(x - mean) / std`` per channel (means/stds given in the *output* colour order).
    Runs on whatever device the crops are on.
    """
    t = as_uint8_tensor(crops)
    lead = t.shape[:-3]
    if t.shape[-3] != crop_size or t.shape[-2] != crop_size:
        raise ValueError(f"expected {crop_size}x{crop_size} aligned crops, got {tuple(t.shape[-3:-1])}")
    x = t.reshape(-1, crop_size, crop_size, 3).permute(0, 3, 1, 2).float()
    x = resize_like_pil_bicubic(x, input_size)
    if colour_order == "BGR":
        x = x.flip(1)
    if scale != 1.0:
        x = x / scale
    if mean is not None and std is not None:
        m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - m) / s
    return x.reshape(*lead, 3, input_size, input_size).contiguous()
