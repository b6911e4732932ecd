"""StyleFlow as TrueMedia.org deployed it: the content branch only (``styleflow_truemedia``).

TrueMedia's StyleFlow server (changyeon2/Truemedia-ML-Models, ``StyleFlow/custommodel.py``)
imports ``I3D8x8`` from ``model/ftcn.py`` — FTCN's fully temporal I3D-R50 trunk and its
temporal transformer, **without** the style attention module (that file has no ``STA``)
— and loads ``content/true_best_1118.pth`` into it (``ckpt['model']`` if present, else the
file, ``load_state_dict(strict=False)``). No pSp encoder and no StyleGRU run: the style
path exists only in commented lines of ``model/ftcn (for Styleflow).py``, which the
style-enabled reconstruction ``styleflow`` / ``styleflow_content`` (:mod:`models.styleflow`)
implements. This model is what their server computes::

    clip  [N, 3, 32, 224, 224]  (RGB, /255, ImageNet mean/std)
    trunk -> [N, 1024, 16, 14, 14] -> spatial mean -> 16 tokens × 1024 -> time_T -> logit [N]

**Video score** (their ``_predict``): one forward per 32-frame clip, then
``sigmoid(mean of the clips' logits)`` — not the mean of the clips' probabilities;
``FAKE`` when it is ≥ 0.2. :meth:`StyleFlowTrueMedia.video_score` is that definition;
the monitor's runner keeps each clip's logit so the video score over a video's clips is
exactly it (:mod:`stream_monitor.inference.runners`).

**Loading.** Their server loads with ``strict=False``; here the load is strict, with one
deliberate exception: the 8 ``resnet.head.STA.*`` tensors a file written by the
"for Styleflow" module carries (``STA`` is built in that module's ``__init__``) are
*ignored*, as ``model/ftcn.py`` has nowhere to put them and their server drops them
silently; the load report lists them. Any other missing, unexpected or mis-shaped key
fails (their ``strict=False`` would leave such a tensor at its random initialisation).
A ``module.`` prefix (DataParallel) is stripped.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ._factory import apply_overrides
from ._loading import LoadReport, load_state, only_tensors, read_checkpoint, strip_prefix
from ._registry import register_model
from .card import CheckpointSpec, ModelCard
from .layers.styleflow_content import ContentBranchConfig, ContentNet
from .styleflow import CONTENT_SIZE, IMAGENET_MEAN, IMAGENET_STD, _card, _content_preprocess

__all__ = ["StyleFlowTrueMedia", "TRUEMEDIA_CARD", "TRUEMEDIA_THRESHOLD", "truemedia_checkpoint_filter_fn",
           "styleflow_truemedia"]

#: TrueMedia labels a video FAKE when its score reaches this (``real_or_fake_thres``).
TRUEMEDIA_THRESHOLD = 0.2
#: Tensors of a stage-2 file that ``model/ftcn.py`` has no module for (see the module docstring).
_IGNORED_PREFIX = "resnet.head.STA."


def _canonical(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``ckpt['model']`` when present (their loader's rule), else the dict; tensors only,
    DataParallel's ``module.`` stripped."""
    raw = dict(checkpoint)
    nested = raw.get("model")
    state = only_tensors(nested) if isinstance(nested, Mapping) else only_tensors(raw)
    return strip_prefix(state, "module.")


def truemedia_checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
    """TrueMedia's content checkpoints (``{'model': I3D8x8 state dict, ...}`` or the bare
    dict, with or without ``module.``) and our canonical safetensors → canonical keys
    (``resnet.s1.*`` … ``resnet.head.time_T.*``), without the ``resnet.head.STA.*``
    tensors their deployed module ignores. Every other tensor key is kept, so a stray
    key is reported as unexpected."""
    return {k: v for k, v in _canonical(checkpoint).items() if not k.startswith(_IGNORED_PREFIX)}


class StyleFlowTrueMedia(nn.Module):
    """TrueMedia's deployed StyleFlow: ``model/ftcn.py``'s ``I3D8x8`` (content only).

    ``forward_logits(video)``: float32 ``[N, 3, T, S, S]`` (T=32, S=224; RGB,
    ``(x/255 − ImageNet mean) / std``; ``card.preprocess`` makes it from uint8 256²
    crops ``[N, T, 256, 256, 3]`` with Pillow's bicubic resize, bit-exact) → logit ``[N]``,
    one per clip. ``forward`` → ``sigmoid(logit)`` ``[N]``, the clip's fake probability
    (TrueMedia's score of a one-clip video). :meth:`video_score` → their video score from
    the clip logits of one video. Clips of a batch are independent.
    """

    checkpoint_filter_fn = staticmethod(truemedia_checkpoint_filter_fn)

    def __init__(self, cfg: ContentBranchConfig, card: ModelCard) -> None:
        super().__init__()
        self.cfg = cfg
        self.card = card
        self.resnet = ContentNet(cfg)

    def forward_logits(self, video: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        expected = (3, cfg.clip_len, cfg.input_size, cfg.input_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected video [N, {', '.join(map(str, expected))}], got {list(video.shape)}")
        return self.resnet.forward_head(video)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.forward_logits(video))

    @staticmethod
    def video_score(logits: torch.Tensor) -> torch.Tensor:
        """TrueMedia's video score: ``sigmoid(mean(logits))`` over the clip logits ``[n]`` of
        one video (float32 scalar). ``ValueError`` for no clips (their server then answers
        ``-1``, "NO_FACE")."""
        flat = logits.reshape(-1).float()
        if flat.numel() == 0:
            raise ValueError("a video score needs at least one clip")
        return torch.sigmoid(flat.mean())

    def load_checkpoint(self, checkpoint: str | os.PathLike[str] | Mapping[str, Any],
                        strict: bool = True) -> LoadReport:
        """Load a TrueMedia content file, its state dict, or our safetensors.

        Strict (default): raises :class:`~models.CheckpointError` naming every missing,
        unexpected or mis-shaped key, before anything is loaded. The style-attention
        tensors of a "for Styleflow" file are not loaded and are listed in
        ``report.ignored`` (see the module docstring).
        """
        source = "state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
        raw = dict(checkpoint) if isinstance(checkpoint, Mapping) else read_checkpoint(checkpoint)
        ignored = sorted(k for k in _canonical(raw) if k.startswith(_IGNORED_PREFIX))
        report = load_state(self, truemedia_checkpoint_filter_fn(raw, self), strict=strict, source=source)
        report.ignored = ignored
        return report


_TRUEMEDIA_SPEC = CheckpointSpec(
    filename="true_best_1118.pth",
    part="model",
    source=("changyeon2/Truemedia-ML-Models StyleFlow server: custommodel.py loads "
            "/checkpoints/content/true_best_1118.pth (its commented local paths also name "
            "content/contents.pth, the same kind of file); not public, given by the owners on request"),
    licence="MIT (Truemedia-ML-Models LICENSE covers the code; weights obtained on request carry the "
            "owners' terms)",
    layout=("{'model': I3D8x8 state dict, ...} or the bare state dict; 275 tensors resnet.s1.* ... "
            "resnet.s4.*, resnet.head.time_T.* (with or without 'module.'). A file written by the "
            "'for Styleflow' module also holds 8 resnet.head.STA.* tensors, which are ignored as their "
            "server ignores them"),
)

TRUEMEDIA_CARD = _card(
    "styleflow_truemedia",
    checkpoints=(_TRUEMEDIA_SPEC,),
    input_size=CONTENT_SIZE, value_range=(0.0, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
    preprocess=_content_preprocess,
    output=("clip fake probability sigmoid(logit), float32 [N]; the video score is sigmoid(mean clip "
            "logit) (StyleFlowTrueMedia.video_score), not the mean probability"),
    notes=("TrueMedia's deployed StyleFlow (custommodel.py + model/ftcn.py): FTCN's content branch only, no "
           "pSp/StyleGRU/style attention. Input: 256 crops -> Pillow bicubic 224, /255, ImageNet mean/std, "
           "[N, 3, 32, 224, 224]. Their server keeps the crops of the first face track only and scores its "
           "first floor(min(n, 110)/32) non-overlapping 32-frame blocks (at most 3), one forward per clip; "
           "df_probability = sigmoid(mean clip logit), FAKE if >= 0.2; fewer than 32 crops -> -1 (NO_FACE). "
           "The monitor: windows of 32 consecutive frames of every track, stride 32 (the same blocks); a live "
           "window's score is sigmoid(its logit), their score of a one-clip video; a video's score is sigmoid "
           "of the mean logit over all its clips (every track, no 110-frame cap; a 16-31-frame track gives one "
           "reflect-padded clip where their server answers NO_FACE)."),
)


@register_model
def styleflow_truemedia(**overrides: Any) -> StyleFlowTrueMedia:
    """TrueMedia's deployed StyleFlow (content branch only), ≈14.8M parameters.
    Overrides: :class:`~models.layers.styleflow_content.ContentBranchConfig` fields."""
    cfg = apply_overrides(ContentBranchConfig(), overrides, "styleflow_truemedia")
    return StyleFlowTrueMedia(cfg, TRUEMEDIA_CARD)
