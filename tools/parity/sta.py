"""Parity data for StA (``sta_clip_vitl14``) from the authors' own module.

Usage::

    python tools/parity/sta.py --ref /work/ref/YZY-stack+StA4Deepfake --out tests/models/data [--full]

Imports ``training/detectors/clip_adapter_detector.py`` from the ``--ref`` checkout
(YZY-stack/StA4Deepfake) with its DeepfakeBench training-only imports (registries,
metrics, losses, tensorboard, timm, clip, sklearn) replaced by stubs, then

(a) writes ``keys_sta_clip_vitl14.json``: the authors' full-size state-dict keys → shapes;
(b) writes ``golden_sta_clip_vitl14.safetensors``: a small configuration filled with
    ``tests/models/seeded.py`` weights, run **one clip per forward pass** (the only way
    the authors' ``CrossAttention`` is correct), with the inputs, logits and
    probabilities; it also runs the authors' batched path on the same clips and prints
    how far it is from the per-clip results (it must differ: that is the bug our model
    avoids);
(c) with ``--full``: builds the authors' model and ours at full size with the same seeded
    weights, runs one 8-frame 224² clip at batch 1 on CPU and prints the max abs
    difference of logits and probability.

The authors' blocks hard-code ViT-L sizes (width 1024, 16 heads, adapter 512, 8 frames);
for the small configuration this script substitutes those literals in the source text
it loads (each substitution is checked to apply), so their forward code runs unchanged.
``einops`` is used if installed; otherwise a minimal ``rearrange`` stands in for it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import json
import math
import sys
import time
import types
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models.sta import STA_CARD, StA  # noqa: E402
from tests.models.seeded import fill_seeded  # noqa: E402

NAME = "sta_clip_vitl14"
DETECTOR_FILE = Path("training/detectors/clip_adapter_detector.py")
SMALL: dict[str, int] = dict(img_size=28, patch_size=7, width=64, layers=2, heads=4, adapter_width=32, num_frames=8)
GOLDEN_CLIPS = 3


# ----------------------------------------------------------------------------- stubs


def _rearrange(tensor: torch.Tensor, pattern: str, **sizes: int) -> torch.Tensor:
    """einops.rearrange for patterns of named axes and parenthesised groups (no ``...``)."""

    def groups(side: str) -> list[list[str]]:
        out: list[list[str]] = []
        current: list[str] | None = None
        for tok in side.replace("(", " ( ").replace(")", " ) ").split():
            if tok == "(":
                current = []
            elif tok == ")":
                assert current is not None
                out.append(current)
                current = None
            elif current is not None:
                current.append(tok)
            else:
                out.append([tok])
        return out

    left, right = (groups(s) for s in pattern.split("->"))
    assert len(left) == tensor.ndim, (pattern, tuple(tensor.shape))
    dims = dict(sizes)
    for group, n in zip(left, tensor.shape):
        unknown = [a for a in group if a not in dims]
        known = math.prod(dims[a] for a in group if a in dims)
        if len(unknown) == 1:
            dims[unknown[0]] = n // known
        assert math.prod(dims[a] for a in group) == n, (pattern, group, n)
    flat = [a for g in left for a in g]
    x = tensor.reshape([dims[a] for a in flat]).permute([flat.index(a) for g in right for a in g])
    return x.reshape([math.prod(dims[a] for a in g) for g in right])


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    # A spec, because torch._dynamo probes sys.modules entries with find_spec.
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__dict__.update(attrs)
    return mod


class _Registry(dict):  # type: ignore[type-arg]
    def register_module(self, module_name: str) -> Any:
        def deco(cls: Any) -> Any:
            self[module_name] = cls
            return cls
        return deco


def _install_stubs(ref: Path) -> None:
    """Stand-ins for everything the detector file imports but inference does not use."""
    def missing(name: str) -> bool:
        try:
            importlib.import_module(name)
            return False
        except ImportError:
            return True

    if missing("einops"):
        sys.modules["einops"] = _module("einops", rearrange=_rearrange)
    if missing("timm"):
        ident = lambda *a, **k: None  # noqa: E731
        sys.modules["timm"] = _module("timm")
        sys.modules["timm.models"] = _module("timm.models")
        sys.modules["timm.models.layers"] = _module("timm.models.layers", DropPath=nn.Identity,
                                                    to_2tuple=ident, trunc_normal_=ident)
    if missing("clip"):
        sys.modules["clip"] = _module("clip")
    if missing("sklearn"):
        metrics = _module("sklearn.metrics")
        sys.modules["sklearn"] = _module("sklearn", metrics=metrics)
        sys.modules["sklearn.metrics"] = metrics
    if missing("torch.utils.tensorboard"):
        sys.modules["torch.utils.tensorboard"] = _module("torch.utils.tensorboard", SummaryWriter=object)
    # DeepfakeBench's own training packages: registries, metrics, losses.
    sys.modules["metrics"] = _module("metrics")
    sys.modules["metrics.base_metrics_class"] = _module("metrics.base_metrics_class",
                                                        calculate_metrics_for_train=None)
    sys.modules["networks"] = _module("networks", BACKBONE=_Registry())
    sys.modules["loss"] = _module("loss", LOSSFUNC={"cross_entropy": nn.CrossEntropyLoss})
    pkg = _module("detectors", DETECTOR=_Registry())
    pkg.__path__ = [str(ref / DETECTOR_FILE.parent)]
    sys.modules["detectors"] = pkg


def _substitutions() -> list[tuple[str, str]]:
    """Literal → config lookup, for a small configuration of the authors' classes."""
    return [
        ("input_resolution=224,", "input_resolution=_CFG['img_size'],"),
        ("patch_size=14,", "patch_size=_CFG['patch_size'],"),
        ("width=1024,", "width=_CFG['width'],"),
        ("layers=14,", "layers=_CFG['layers'],"),
        ("heads=16,", "heads=_CFG['heads'],"),
        ("in_channels=1024,", "in_channels=_CFG['width'],"),
        ("d_model = 1024", "d_model = _CFG['width']"),
        ("n_head = 16", "n_head = _CFG['heads']"),
        ("self.adapter_channels = int(1024 * 0.5)", "self.adapter_channels = _CFG['adapter_width']"),
        ("self.Adapter = ViT_Adapter()",
         "self.Adapter = ViT_Adapter(num_frames=_CFG['num_frames'], in_channels=_CFG['width'], "
         "out_channels=_CFG['width'])"),
    ]


def load_authors(ref: Path, small: dict[str, int] | None = None, tag: str = "full") -> types.ModuleType:
    """The authors' detector module, as written (``small=None``) or with its size literals
    replaced by ``small``."""
    _install_stubs(ref)
    source = (ref / DETECTOR_FILE).read_text()
    if small is not None:
        for old, new in _substitutions():
            if old not in source:
                raise RuntimeError(f"the authors' file changed: {old!r} not found")
            source = source.replace(old, new)
    name = f"detectors.clip_adapter_detector_{tag}"
    mod = types.ModuleType(name)
    mod.__file__ = str(ref / DETECTOR_FILE)
    mod.__package__ = "detectors"
    mod.__dict__["_CFG"] = dict(small or {})
    sys.modules[name] = mod
    exec(compile(source, str(ref / DETECTOR_FILE), "exec"), mod.__dict__)
    return mod


def build_authors(mod: types.ModuleType, num_frames: int) -> nn.Module:
    config = {"resolution": 224, "clip_size": num_frames, "loss_func": "cross_entropy"}
    return mod.CLIPAdapterDetector(config).eval()


@torch.no_grad()
def authors_logits(det: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    return det({"image": clips, "label": torch.zeros(clips.shape[0], dtype=torch.long)})["cls"]


@torch.no_grad()
def authors_per_clip(det: nn.Module, clips: torch.Tensor) -> torch.Tensor:
    """One clip per forward pass, as the authors' demo runs it."""
    return torch.cat([authors_logits(det, clips[i:i + 1]) for i in range(clips.shape[0])])


def build_ours(seed: int, **overrides: Any) -> StA:
    return cast(StA, fill_seeded(models.create_model(NAME, **overrides), seed).eval())


# ----------------------------------------------------------------------------- tasks


def write_keys(ref: Path, out: Path) -> None:
    # Built on CPU: the authors' Transformer calls .item() during construction, which meta refuses.
    det = build_authors(load_authors(ref, None, "keys"), 8)
    keys = {k: list(v.shape) for k, v in det.state_dict().items()}
    n_params = sum(p.numel() for p in det.parameters())
    path = out / f"keys_{NAME}.json"
    path.write_text(json.dumps(keys, indent=0) + "\n")
    print(f"keys: {len(keys)} tensors, {n_params:,} parameters -> {path}")


def small_crops(seed: int, clips: int, cfg: dict[str, int]) -> torch.Tensor:
    """Random aligned crops, uint8 RGB ``[clips, T, S, S, 3]`` (stored in the golden file)."""
    shape = (clips, cfg["num_frames"], cfg["img_size"], cfg["img_size"], 3)
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def clip_normalise(crops: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., S, S, 3]`` → float ``[..., 3, S, S]``: ToTensor then CLIP Normalize (the demo's steps)."""
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)
    return (crops.movedim(-1, -3).float() / 255.0 - mean) / std


def write_golden(ref: Path, out: Path, seed: int) -> None:
    from safetensors.torch import save_file

    det = fill_seeded(build_authors(load_authors(ref, SMALL, "small"), SMALL["num_frames"]), seed)
    crops = small_crops(seed, GOLDEN_CLIPS, SMALL)
    x = clip_normalise(crops)
    logits = authors_per_clip(det, x)
    probs = torch.softmax(logits, dim=1)[:, 1]
    batched = authors_logits(det, x)
    print(f"golden: per-clip logits {logits.tolist()}\n        probabilities {probs.tolist()}")
    print(f"authors' batch-{GOLDEN_CLIPS} path vs their batch-1 results: max abs diff of logits "
          f"{(batched - logits).abs().max().item():.4g} (non-zero: their CrossAttention mixes clips)")
    if not bool(((probs > 0.05) & (probs < 0.95)).all()):
        raise SystemExit("seeded probabilities are saturated; choose another seed")
    if (batched - logits).abs().max().item() < 1e-3:
        raise SystemExit("the authors' batched path agrees with per-clip results; the trap is not exercised")
    ours = build_ours(seed, **SMALL)
    with torch.no_grad():
        ours_logits = ours.forward_logits(x)
    print(f"ours (batch {GOLDEN_CLIPS}) vs authors per clip: max abs diff of logits "
          f"{(ours_logits - logits).abs().max().item():.3g}")
    meta = {"model": NAME, "seed": str(seed), "overrides": json.dumps(SMALL),
            "source": "YZY-stack/StA4Deepfake training/detectors/clip_adapter_detector.py, one clip per forward",
            "crops": "uint8 RGB [clips, T, S, S, 3]; model input = (crops/255 - CLIP mean) / CLIP std, channels first"}
    path = out / f"golden_{NAME}.safetensors"
    save_file({"crops": crops.contiguous(), "logits": logits.contiguous(), "probs": probs.contiguous(),
               "authors_batched_logits": batched.contiguous()}, str(path), metadata=meta)
    print(f"golden -> {path} ({path.stat().st_size:,} bytes)")


def full_parity(ref: Path, seed: int) -> None:
    crops = (torch.rand(1, 8, 224, 224, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    x = STA_CARD.preprocess(crops)
    det = fill_seeded(build_authors(load_authors(ref, None, "cpu"), 8), seed)
    n_auth = sum(p.numel() for p in det.parameters())
    t0 = time.perf_counter()
    ref_logits = authors_logits(det, x)
    t_auth = time.perf_counter() - t0
    del det
    ours = build_ours(seed)
    n_ours = sum(p.numel() for p in ours.parameters())
    t0 = time.perf_counter()
    with torch.no_grad():
        our_logits = ours.forward_logits(x)
    t_ours = time.perf_counter() - t0
    ref_p = torch.softmax(ref_logits, 1)[:, 1]
    our_p = torch.softmax(our_logits, 1)[:, 1]
    print(f"full size: params authors {n_auth:,} ours {n_ours:,}")
    print(f"full size: authors logits {ref_logits.tolist()} p {ref_p.tolist()} ({t_auth:.0f} s)")
    print(f"full size: ours    logits {our_logits.tolist()} p {our_p.tolist()} ({t_ours:.0f} s)")
    print(f"full size: max abs diff logits {(ref_logits - our_logits).abs().max().item():.3g}, "
          f"probability {(ref_p - our_p).abs().max().item():.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", type=Path, required=True, help="StA4Deepfake checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "tests/models/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true", help="also run the full-size CPU parity check")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    write_keys(args.ref, args.out)
    write_golden(args.ref, args.out, args.seed)
    if args.full:
        full_parity(args.ref, args.seed)


if __name__ == "__main__":
    main()
