"""StyleFlow (Choi et al., "Exploiting Style Latent Flows for Generalizing Deepfake Video
Detection", CVPR 2024, arXiv 2403.06592).

Three parts, each registered on its own and composed by ``styleflow``:

* ``styleflow_psp_encoder`` (:mod:`models.layers.psp_encoder`): pSp GradualStyleEncoder,
  per frame: RGB ``[-1, 1]`` 256² → W+ ``[18, 512]``.
* ``styleflow_stylegru`` (:mod:`models.layers.stylegru`): stage 1, bi-GRU over the style
  flow ``ΔS_t = S_{t+1} − S_t`` (31 steps × 9216) → embedding ``E`` ``[16384]``.
* ``styleflow_content`` (this file; blocks in :mod:`models.layers.styleflow_content`):
  stage 2. FTCN's fully temporal I3D-R50 trunk
  (:mod:`models.layers.i3d_temporal`) on the 32-frame clip (RGB, ImageNet mean/std,
  224²) → ``[N, 1024, 16, 14, 14]`` → spatial mean → 16 time tokens × 1024; the style
  attention module (SAM, :mod:`models.layers.style_attention`) adds style information
  from ``E``; FTCN's temporal transformer (:mod:`models.layers.time_transformer`) maps
  the tokens to one logit; the fake probability is its sigmoid.

**This is a reconstruction.** No released code runs the style-enabled stage 2:
TrueMedia's server (changyeon2/Truemedia-ML-Models ``StyleFlow/custommodel.py``) runs
the content-only ``model/ftcn.py`` on ``true_best_1118.pth`` — that model is
``styleflow_truemedia`` (:mod:`models.styleflow_truemedia`). In their
``StyleFlow/model/ftcn (for Styleflow).py`` the released ``TransformerHead.forward`` runs
the content path only; the style path is present as commented lines marked
``ftcn + StyleGRU`` and ``SAM``, and ``STA`` is built in ``__init__`` (so its weights are
in the stage-2 checkpoints, 283 keys). Switched on, those lines give, per clip::

    x      = AvgPool3d(1,14,14)(trunk(video)) -> [N, 16, 1024]  (content tokens, time order)
    codes  = E.reshape(N, 16, 1024)       # row i = E[1024 i : 1024 (i+1)]
    codes  = STA(q, k, v)                 # lp(softmax(W_q q · (W_k k)ᵀ / √1024) W_v v)
    logit  = time_T(x + codes)

with one of three ``STA`` calls, all in the file, all with the same weights (identical key
names and shapes, so a checkpoint cannot tell them apart). They are selectable as the
content config's ``sam_reading`` (``styleflow_content(sam_reading=...)``,
``styleflow(content={"sam_reading": ...})``; see ``SAM_READINGS`` in
:mod:`models.layers.styleflow_content`):

* ``content_style_style`` (default): ``STA(x_c, codes, codes)``, the line labelled ``SAM``;
* ``content_content_style``: ``STA(x_c, x_c, codes)``;
* ``style_style_content``: ``STA(codes, codes, x_c)``.

Why the default: (1) it is the variant the authors label ``SAM`` and the one ``STA``'s
zero-initialised ``lp`` is designed for (adding a zero update to the content tokens starts
stage 2 from the content model); the other two are marked as experiments ("SAM 종류변경
실험", variants of SAM); (2) it matches DETECTORS.md and the paper's description (content
queries, style keys/values). Note the style "tokens" are consecutive 1024-chunks of ``E`` =
[layer-0 forward, layer-0 backward, layer-1 forward, layer-1 backward] final GRU states
(four tokens per state), not time steps. The scale is ``1/√1024`` (the width of the key
input before projection). ``E`` enters as StyleGRU's raw embedding (the ``w/o StyleGRU``
lines that pool and batch-normalise codes belong to an ablation and have no weights in the
head). Files that pair: a stage-2 file with ``STA`` (TrueMedia's ``content/finetuning.pth``
or ``content/total_best.pth``) with a StyleGRU (``style/style_best.pth``) and pSp's
``psp_ffhq_encode.pt``; ``true_best_1118.pth`` is a content-only file for
``styleflow_truemedia``.

Canonical keys: ``styleflow_content`` uses the authors' ``I3D8x8`` keys (``resnet.s1.*``
… ``resnet.s4.*``, ``resnet.head.time_T.*``, ``resnet.head.STA.*``); the composite
prefixes its parts with ``psp.``, ``stylegru.``, ``content.``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ._loading import (CheckpointError, LoadReport, compare_state, load_state, only_tensors, read_checkpoint,
                       strip_prefix)
from ._factory import apply_overrides
from ._registry import register_model
from .card import AlignTemplate, CheckpointSpec, ModelCard, Points5, normalize_crops, resize_like_pil_bicubic
from .layers.psp_encoder import PSP_MEAN, PSP_STD, PSPEncoder, PSPEncoderConfig, psp_checkpoint_filter_fn
from .layers.styleflow_content import StyleFlowContentConfig, StyleFlowContentNet
from .layers.stylegru import StyleGRU, StyleGRUConfig, style_flow, stylegru_checkpoint_filter_fn

__all__ = [
    "StyleFlow", "StyleFlowConfig", "StyleFlowContent", "StyleFlowContentConfig", "STYLEFLOW_TEMPLATE",
    "STYLEFLOW_CARD", "PSP_CARD", "STYLEGRU_CARD", "CONTENT_CARD", "content_checkpoint_filter_fn",
    "psp_checkpoint_filter_fn", "stylegru_checkpoint_filter_fn", "styleflow_checkpoint_filter_fn",
    "styleflow", "styleflow_psp_encoder", "styleflow_stylegru", "styleflow_content",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------- content model


def content_checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """Stage-2 checkpoints of the TrueMedia code to canonical (``I3D8x8``) keys.

    Accepts ``{'model': state_dict, ...}`` (the loader takes ``ckpt['model']`` when present)
    and bare state dicts, each with or without DataParallel's ``module.``, and our
    canonical safetensors. Non-tensor entries are dropped; every tensor key is kept so a
    stray key is reported as unexpected. A content-only FTCN checkpoint (no
    ``resnet.head.STA.*``, such as TrueMedia's deployed ``true_best_1118.pth``) fails a
    strict load on the 8 missing SAM tensors: it belongs to ``styleflow_truemedia``.
    """
    raw = dict(checkpoint)
    nested = raw.get("model")
    state = only_tensors(nested) if isinstance(nested, Mapping) else only_tensors(raw)
    return strip_prefix(state, "module.")


class StyleFlowContent(nn.Module):
    """StyleFlow's stage-2 classifier (content branch + SAM + temporal transformer), as
    reconstructed from commented lines (module docstring; ``cfg.sam_reading`` picks the
    ``STA`` call).

    ``forward_logits(video, style)``: ``video`` float32 ``[N, 3, T, S, S]`` (T=32,
    S=224; RGB, ``(x/255 − ImageNet mean) / std``; ``card.preprocess`` makes it from 256²
    crops), ``style`` float32 ``[N, 16384]`` (StyleGRU's ``E`` for the same clip) →
    logit ``[N]``. ``forward`` → fake probability ``sigmoid(logit)`` ``[N]``. Clips of a
    batch are independent (batch norms use running statistics in eval).
    """

    checkpoint_filter_fn = staticmethod(content_checkpoint_filter_fn)

    def __init__(self, cfg: StyleFlowContentConfig, card: ModelCard) -> None:
        super().__init__()
        self.cfg = cfg
        self.card = card
        self.resnet = StyleFlowContentNet(cfg)

    def forward_logits(self, video: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        expected = (3, cfg.clip_len, cfg.input_size, cfg.input_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected video [N, {', '.join(map(str, expected))}], got {list(video.shape)}")
        if style.dim() != 2 or style.shape[0] != video.shape[0] or style.shape[1] != cfg.style_dim:
            raise ValueError(f"expected style [{video.shape[0]}, {cfg.style_dim}], got {list(style.shape)}")
        return self.resnet.forward_head(video, style)

    def forward(self, video: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(video, style))


# --------------------------------------------------------------------------- composite


@dataclass(frozen=True)
class StyleFlowConfig:
    """The three parts; their sizes must chain (checked here)."""

    psp: PSPEncoderConfig = field(default_factory=PSPEncoderConfig)
    stylegru: StyleGRUConfig = field(default_factory=StyleGRUConfig)
    content: StyleFlowContentConfig = field(default_factory=StyleFlowContentConfig)

    def __post_init__(self) -> None:
        p, g, c = self.psp, self.stylegru, self.content
        problems = []
        if g.steps != c.clip_len - 1:
            problems.append(f"stylegru.steps {g.steps} != content.clip_len - 1 = {c.clip_len - 1}")
        if g.input_size != p.n_styles * p.style_dim:
            problems.append(f"stylegru.input_size {g.input_size} != psp n_styles·style_dim "
                            f"{p.n_styles * p.style_dim}")
        if g.embed_dim != c.style_dim:
            problems.append(f"stylegru embedding {g.embed_dim} != content style_dim {c.style_dim}")
        if c.input_size > p.input_size:
            problems.append(f"content.input_size {c.input_size} > crop size {p.input_size}")
        if problems:
            raise ValueError("inconsistent StyleFlow parts: " + "; ".join(problems))

    @property
    def clip_len(self) -> int:
        return self.content.clip_len

    @property
    def crop_size(self) -> int:
        return self.psp.input_size


#: Part names accepted by :meth:`StyleFlow.load_checkpoint` -> submodule.
PARTS = {"psp_encoder": "psp", "psp": "psp", "stylegru": "stylegru", "content": "content"}


def styleflow_checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """A single composite file: our canonical ``psp.*``/``stylegru.*``/``content.*`` tensors.

    (The authors never saved the three parts together; their files go through
    :meth:`StyleFlow.load_checkpoint` as a mapping part -> file.)
    """
    return strip_prefix(only_tensors(checkpoint), "module.")


def _content_input(frames: torch.Tensor, size: int) -> torch.Tensor:
    """``[M, 3, S, S]`` 0–255 → content input ``[M, 3, size, size]``: Pillow's bicubic resize
    (bit-exact; the authors resize uint8 PNGs with PIL), ``/255``, ImageNet mean/std."""
    x = resize_like_pil_bicubic(frames, size) / 255.0
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class StyleFlow(nn.Module):
    """StyleFlow end to end: one fake probability per 32-frame clip.

    ``forward(x)``: float32 ``[N, 32, 3, 256, 256]``, RGB 0–255, the aligned crops of 32
    consecutive frames (``card.preprocess`` turns uint8 ``[N, 32, 256, 256, 3]`` into
    this) → fake probability ``[N]``. Inside: pSp input ``(x/255 − 0.5)/0.5`` → W+ per frame;
    style flow (31 differences) → StyleGRU ``E``; content input (Pillow's bicubic
    256 → 224, bit-exact, ``/255``, ImageNet mean/std) → content branch with SAM on ``E``.

    ``forward_from_latents(latents, video)`` is the monitor's incremental path: pSp codes
    cached per frame (``[N, 32, 18, 512]``, valid while each frame's clip transform is
    unchanged) and the content input ``[N, 3, 32, 224, 224]``.
    """

    checkpoint_filter_fn = staticmethod(styleflow_checkpoint_filter_fn)

    def __init__(self, cfg: StyleFlowConfig, card: ModelCard) -> None:
        super().__init__()
        self.cfg = cfg
        self.card = card
        self.psp = PSPEncoder(cfg.psp)
        self.stylegru = StyleGRU(cfg.stylegru)
        self.content = StyleFlowContent(cfg.content, CONTENT_CARD)

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """pSp W+ codes of ``[M, 3, S, S]`` RGB 0–255 frames → ``[M, n_styles, style_dim]``."""
        return self.psp((frames / 255.0 - PSP_MEAN[0]) / PSP_STD[0])

    def content_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Content-branch input of ``[M, 3, S, S]`` RGB 0–255 frames → ``[M, 3, s, s]`` (ImageNet)."""
        return _content_input(frames, self.cfg.content.input_size)

    def logits_from_latents(self, latents: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """``latents`` ``[N, T, n_styles, style_dim]``, ``video`` ``[N, 3, T, s, s]`` → logit ``[N]``."""
        return self.content.forward_logits(video, self.stylegru.embed(style_flow(latents)))

    def forward_from_latents(self, latents: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits_from_latents(latents, video))

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        n, t, s = x.shape[0], self.cfg.clip_len, self.cfg.crop_size
        if x.dim() != 5 or tuple(x.shape[1:]) != (t, 3, s, s):
            raise ValueError(f"expected crops [N, {t}, 3, {s}, {s}] (RGB 0-255), got {list(x.shape)}")
        frames = x.reshape(n * t, 3, s, s)
        latents = self.encode_frames(frames)
        latents = latents.reshape(n, t, *latents.shape[1:])
        size = self.cfg.content.input_size
        video = self.content_input(frames).reshape(n, t, 3, size, size).transpose(1, 2)
        return self.logits_from_latents(latents, video)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(x))

    def load_checkpoint(self, checkpoint: str | os.PathLike[str] | Mapping[str, Any],
                        strict: bool = True) -> LoadReport:
        """Load the parts' files, or one composite file / state dict.

        ``checkpoint``: a mapping ``{"psp_encoder": path, "stylegru": path, "content": path}``
        (values may also be state dicts; each part goes through its own filter, so the
        authors' files load as they are), or a path / state dict with canonical
        ``psp.*``/``stylegru.*``/``content.*`` keys. Returns one report with prefixed keys;
        strict (default) raises :class:`CheckpointError` before anything is loaded if any
        part has missing, unexpected or mis-shaped keys (a part left out of the mapping
        counts as missing).
        """
        stray: list[str] = []
        if isinstance(checkpoint, Mapping) and checkpoint and set(checkpoint) <= set(PARTS) \
                and all(isinstance(v, (str, os.PathLike, Mapping)) for v in checkpoint.values()):
            sources: dict[str, Any] = {PARTS[name]: source for name, source in checkpoint.items()}
        else:
            raw = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
            state = styleflow_checkpoint_filter_fn(raw, self)
            sources = {}
            for name in ("psp", "stylegru", "content"):
                sub = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
                if sub:
                    sources[name] = sub
            stray = [k for k in state if k.split(".", 1)[0] not in ("psp", "stylegru", "content")]
        report = LoadReport(unexpected=stray)
        states: dict[str, dict[str, torch.Tensor]] = {}
        for name in ("psp", "stylegru", "content"):
            module: nn.Module = getattr(self, name)
            if name not in sources:
                report.missing += [f"{name}.{k}" for k in module.state_dict()]
                continue
            source = sources[name]
            raw_part = dict(source) if isinstance(source, Mapping) else read_checkpoint(source)
            try:
                states[name] = module.checkpoint_filter_fn(raw_part, module)  # type: ignore[operator]
            except (KeyError, ValueError, TypeError) as exc:
                raise CheckpointError(f"{name}: layout not recognised for {type(module).__name__}: {exc}") from exc
            part_report = compare_state(module, states[name])
            report.missing += [f"{name}.{k}" for k in part_report.missing]
            report.unexpected += [f"{name}.{k}" for k in part_report.unexpected]
            report.mismatched += [(f"{name}.{k}", a, b) for k, a, b in part_report.mismatched]
        if strict and not report.ok:
            raise CheckpointError(f"checkpoint does not fit StyleFlow: {report}")
        for name, state in states.items():
            report.loaded += load_state(getattr(self, name), state, strict=False).loaded
        return report


# --------------------------------------------------------------------------- cards

#: FTCN's ``std_points_256`` (``test_tools/warp_for_xray.py``: ``std_points_317`` + 30
#: padding − (30, 60)); image-left eye, image-right eye, nose, mouth corners.
STD_POINTS_256: Points5 = ((85.82991, 85.7792), (169.0532, 84.3381), (127.574, 137.0006),
                           (90.6964, 174.7014), (167.3069, 173.3733))
CROP_SIZE = 256
CONTENT_SIZE = 224

STYLEFLOW_TEMPLATE = AlignTemplate(
    name="ftcn_std_points_256",
    size=CROP_SIZE,
    points=STD_POINTS_256,
    fit="cp2tform",  # FTCN solves crop→frame by least squares, then inverts
    per_clip=True,
    keypoints=("RetinaFace MobileNet-0.25 (mobilenet0.25_Final.pth) 5 points on the full-resolution RGB "
               "frame minus (104, 117, 123): image-left eye, image-right eye, nose, image-left and "
               "image-right mouth corner; fallback 68-point MobileNet_GDConv (means of 36-41 and 42-47, "
               "points 30, 48, 54). One similarity transform per 32-frame clip, fitted to all 160 points; "
               "each frame's 2x face box pasted on a black canvas before the warp"),
    mapping=("Use a generic 5-point detector's eye centres, nose tip and mouth corners directly (same "
             "meaning). Exact only with the same RetinaFace weights and input; other detectors are "
             "approximate with a detector-specific bias [unverified], likely a few % of the inter-ocular "
             "distance (1% IOD ≈ 0.8 px at 256). The 160-point clip fit averages jitter, not bias."),
    keypoint_offsets=None,
    box_scale=2.0,
)

_PAPER = ("Choi et al., Exploiting Style Latent Flows for Generalizing Deepfake Video Detection, "
          "CVPR 2024, arXiv 2403.06592")
_CODE = ("https://github.com/jongwook-Choi/StyleFlow (stage 1, preprocessing); stage 2: "
         "https://github.com/changyeon2/Truemedia-ML-Models (StyleFlow/)")
_SAMPLING = ("Consecutive frames, as in the training data (FF++ at 25-30 fps; FTCN's crop pipeline keeps "
             "every frame). A faster source is decimated to 30 fps; slower sources use every frame. Windows "
             "of 32 frames (≈1.1-1.3 s) step 32: non-overlapping and aligned to the track start, as the "
             "authors' stored blocks are, so each frame's clip transform is fixed and its pSp latents can be "
             "cached exactly; overlapping windows would re-fit the alignment and re-encode all 32 frames.")

_PSP_SPEC = CheckpointSpec(
    filename="psp_ffhq_encode.pt",
    part="psp_encoder",
    source=("https://github.com/eladrich/pixel2style2pixel (README, Pretrained Models: 'StyleGAN Inversion', "
            "Google Drive id 1bMTNWkh5LArlaWSc_wa8VKyq2V42T2z0); file name from the TrueMedia pSp hook"),
    licence=("MIT (pixel2style2pixel LICENSE). The file also holds the StyleGAN2 FFHQ generator (decoder.*), "
             "which is not loaded; its own terms (NVIDIA, FFHQ) are not covered here [unverified]"),
    layout=("torch.save dict {'state_dict': encoder.* and decoder.* tensors, 'opts': dict, 'latent_avg': "
            "[18, 512]}; encoder.* loaded without the prefix, decoder.* dropped. Also accepted: a bare "
            "encoder state dict, our canonical safetensors"),
)
_STYLEGRU_SPEC = CheckpointSpec(
    filename="checkpoint_<epoch>",
    part="stylegru",
    source=("StyleGRU/train.py of jongwook-Choi/StyleFlow writes <result_dir>/<exp_name>/checkpoint_<epoch> "
            "(no extension) every epoch; no weights are published, given by the authors on request "
            "(TrueMedia's copy names its stage-1 file style/style_best.pth)"),
    licence="MIT (jongwook-Choi/StyleFlow LICENSE covers the code; weights obtained on request carry the "
            "authors' terms)",
    layout=("{'epoch': e+1, 'state_dict': DataParallel(TripletNet(StyleGRU)) keys module.model.*}; also a "
            "bare StyleGRU state dict, our canonical safetensors"),
)
_CONTENT_SPEC = CheckpointSpec(
    filename="finetuning.pth",
    part="content",
    source=("changyeon2/Truemedia-ML-Models StyleFlow: the style-enabled stage-2 files its custommodel.py "
            "names in commented lines, content/finetuning.pth (after fine-tuning) or content/total_best.pth "
            "(before), paired there with style/style_best.pth; not public, given by the owners on request. "
            "Their deployed content/true_best_1118.pth is content-only: model styleflow_truemedia"),
    licence="MIT (Truemedia-ML-Models LICENSE covers the code; weights obtained on request carry the "
            "authors' terms)",
    layout=("{'model': I3D8x8 state dict, ...} or the bare state dict, 283 tensors resnet.s1.* ... "
            "resnet.head.time_T.*, resnet.head.STA.*; with or without 'module.'"),
)


def _content_preprocess(crops: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 RGB ``[N, T, 256, 256, 3]`` → content input float32 ``[N, 3, T, 224, 224]``."""
    x = normalize_crops(crops, crop_size=CROP_SIZE, input_size=CONTENT_SIZE, colour_order="RGB",
                        scale=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return x.transpose(-4, -3).contiguous()


_psp_preprocess = functools.partial(normalize_crops, crop_size=CROP_SIZE, input_size=CROP_SIZE,
                                    colour_order="RGB", scale=255.0, mean=PSP_MEAN, std=PSP_STD)


def _card(name: str, **kw: Any) -> ModelCard:
    common: dict[str, Any] = dict(
        name=name, family="styleflow", paper=_PAPER, code=_CODE, template=STYLEFLOW_TEMPLATE,
        colour_order="RGB", clip_len=32, window_len=32, window_stride=32, sample_fps=30.0, consecutive=True,
        sampling=_SAMPLING, checkpoints=(_PSP_SPEC, _STYLEGRU_SPEC, _CONTENT_SPEC),
    )
    common.update(kw)
    return ModelCard(**common)


STYLEFLOW_CARD = _card(
    "styleflow",
    input_size=CROP_SIZE, value_range=(0.0, 255.0), mean=None, std=None,
    preprocess=functools.partial(normalize_crops, crop_size=CROP_SIZE, input_size=CROP_SIZE,
                                 colour_order="RGB", scale=1.0, mean=None, std=None),
    notes=("Input [N, 32, 3, 256, 256] RGB 0-255; the model derives the pSp input ([-1, 1] at 256) and the "
           "content input (Pillow-exact bicubic to 224, ImageNet mean/std) itself. forward_from_latents takes "
           "cached per-frame pSp codes. Stage-2 style path reconstructed from commented lines (see "
           "models.styleflow). Reported: Celeb-DF v2 AUC 0.890 trained on FF++ c23. TrueMedia's video score "
           "is sigmoid(mean clip logit) over non-overlapping clips."),
)
PSP_CARD = _card(
    "styleflow_psp_encoder",
    clip_len=1, window_len=32, window_stride=32, checkpoints=(_PSP_SPEC,),
    input_size=CROP_SIZE, value_range=(0.0, 1.0), mean=PSP_MEAN, std=PSP_STD, preprocess=_psp_preprocess,
    output="W+ codes float32 [N, 18, 512] (latent_avg included); not a probability",
    notes=("Per-frame part of styleflow: uint8 crops [N, 256, 256, 3] -> [N, 3, 256, 256] in [-1, 1] "
           "(ToTensor + Normalize(0.5, 0.5)). Frozen in both stages."),
)
STYLEGRU_CARD = _card(
    "styleflow_stylegru",
    checkpoints=(_STYLEGRU_SPEC,),
    input_size=CROP_SIZE, value_range=(0.0, 1.0), mean=PSP_MEAN, std=PSP_STD, preprocess=_psp_preprocess,
    output="stage-1 fake probability [N] (forward); embed() gives the 16384-d E that stage 2 reads",
    notes=("Input is the style flow [N, 31, 9216] = models.layers.stylegru.style_flow(pSp codes of 32 "
           "frames), not images; preprocess is the pSp one for the crops those codes come from."),
)
CONTENT_CARD = _card(
    "styleflow_content",
    checkpoints=(_CONTENT_SPEC,),
    input_size=CONTENT_SIZE, value_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    preprocess=_content_preprocess,
    notes=("forward(video, style): video [N, 3, 32, 224, 224] from preprocess (256 crops -> Pillow "
           "bicubic 224, /255, ImageNet mean/std; FTCN itself aligns straight to 224), style = StyleGRU "
           "embedding E [N, 16384] of the same clip."),
)


# --------------------------------------------------------------------------- entry points


def _attach(model: nn.Module, card: ModelCard) -> nn.Module:
    setattr(model, "card", card)  # the part classes live in models.layers; their cards live here
    return model


@register_model
def styleflow_psp_encoder(**overrides: Any) -> nn.Module:
    """pSp GradualStyleEncoder (IR-SE-50), ≈267M parameters. Overrides: ``PSPEncoderConfig`` fields."""
    return _attach(PSPEncoder(apply_overrides(PSPEncoderConfig(), overrides, "styleflow_psp_encoder")), PSP_CARD)


@register_model
def styleflow_stylegru(**overrides: Any) -> nn.Module:
    """StyleGRU with its stage-1 head, ≈764M parameters. Overrides: ``StyleGRUConfig`` fields."""
    return _attach(StyleGRU(apply_overrides(StyleGRUConfig(), overrides, "styleflow_stylegru")), STYLEGRU_CARD)


@register_model
def styleflow_content(**overrides: Any) -> StyleFlowContent:
    """Stage-2 content branch + SAM + temporal transformer, ≈19M parameters.
    Overrides: :class:`StyleFlowContentConfig` fields."""
    return StyleFlowContent(apply_overrides(StyleFlowContentConfig(), overrides, "styleflow_content"), CONTENT_CARD)


@register_model
def styleflow(psp: Mapping[str, Any] | PSPEncoderConfig | None = None,
              stylegru: Mapping[str, Any] | StyleGRUConfig | None = None,
              content: Mapping[str, Any] | StyleFlowContentConfig | None = None) -> StyleFlow:
    """pSp + StyleGRU + content branch, ≈1.05B parameters. Each argument is that part's config
    or a mapping of overrides of its defaults (small configurations for tests)."""
    def part(value: Any, default: Any, what: str) -> Any:
        if value is None or isinstance(value, type(default)):
            return value if value is not None else default
        return apply_overrides(default, value, what)

    cfg = StyleFlowConfig(psp=part(psp, PSPEncoderConfig(), "psp"),
                          stylegru=part(stylegru, StyleGRUConfig(), "stylegru"),
                          content=part(content, StyleFlowContentConfig(), "content"))
    return StyleFlow(cfg, STYLEFLOW_CARD)
