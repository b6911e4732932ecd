"""Parity data for StyleFlow's pSp encoder and StyleGRU, made from the authors' modules.

Usage::

    python tools/parity/styleflow_parts.py --ref /work/ref --out tests/models/data [--full]

``--ref`` is the folder holding the checkouts ``eladrich+pixel2style2pixel`` (pSp) and
``jongwook-Choi+StyleFlow`` (override with ``--psp-ref`` / ``--styleflow-ref``). The
authors' modules are imported from there, never copied. Writes

* ``keys_styleflow_psp_encoder.json`` / ``keys_styleflow_stylegru.json``: key → shape of
  the authors' modules at full size (built on ``meta``). pSp keeps ``latent_avg`` beside
  its state dict (``ckpt['latent_avg']``, StyleGAN2's mean W repeated ``n_styles`` times);
  it is added as ``[n_styles, 512]`` because our canonical layout carries it.
* ``golden_styleflow_psp_encoder.safetensors`` / ``golden_styleflow_stylegru.safetensors``:
  small-configuration inputs and the authors' outputs under ``tests/models/seeded.py``
  weights; the config overrides and the seed are in the metadata.

``--full`` also runs both modules at full size on CPU (pSp: one 256×256 frame; StyleGRU:
one 31×9216 flow) against ours with the same seeded weights and prints max abs diffs.

Stubs, all for imports the encoder does not use at inference: pSp's
``models.stylegan2.op`` compiles CUDA kernels on import (``EqualLinear`` without an
activation never calls them); StyleFlow's loader module imports ``pandas`` (only its
dataset split code uses it; ``get_diff`` does not).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import types
from argparse import Namespace
from pathlib import Path
from typing import Any, Iterator

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.layers.psp_encoder import PSPEncoder, PSPEncoderConfig  # noqa: E402
from models.layers.stylegru import StyleGRU, StyleGRUConfig, style_flow  # noqa: E402
from tests.models.seeded import fill_seeded  # noqa: E402

SEED = 0
PSP_SMALL: dict[str, Any] = {"widths": (16, 32, 48, 64), "n_styles": 9, "style_dim": 32, "input_size": 64}
GRU_SMALL: dict[str, Any] = {"input_size": 36, "hidden_size": 16, "res_hidden": 24}
PSP_SMALL_BATCH = 2
GRU_SMALL_BATCH = 4
GRU_SMALL_STYLES = (18, 2)  # W+ rows × values per row of the synthetic small latents


# ----------------------------------------------------------------------------- imports

@contextlib.contextmanager
def _foreign_package(root: Path, package: str, stubs: dict[str, types.ModuleType]) -> Iterator[None]:
    """Import from ``root`` a package whose name clashes with ours (pSp's ``models``).

    Our modules under that name are set aside and restored afterwards; the authors'
    modules stay alive through the references the caller keeps.
    """
    def ours(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if ours(k) or k in stubs]:
            del sys.modules[k]
        sys.modules.update(saved)


def _stub(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def _unavailable(*_: Any, **__: Any) -> Any:
    raise RuntimeError("stubbed CUDA op called; the pSp encoder should not need it")


def import_psp(root: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """pSp's ``psp_encoders`` and ``helpers`` modules."""
    op = _stub("models.stylegan2.op", FusedLeakyReLU=_unavailable, fused_leaky_relu=_unavailable,
               upfirdn2d=_unavailable)
    with _foreign_package(root, "models", {"models.stylegan2.op": op}):
        encoders = importlib.import_module("models.encoders.psp_encoders")
        helpers = importlib.import_module("models.encoders.helpers")
    return encoders, helpers


def import_stylegru(root: Path) -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """StyleFlow's ``model.StyleGRU``, ``model.net`` and ``dataloader.triplet_clip_loader``."""
    code = root / "StyleGRU"
    stubs = {"pandas": _stub("pandas")}
    with _foreign_package(code, "model", stubs), _foreign_package(code, "dataloader", {}):
        gru = importlib.import_module("model.StyleGRU")
        net = importlib.import_module("model.net")
        loader = importlib.import_module("dataloader.triplet_clip_loader")
    return gru, net, loader


# ----------------------------------------------------------------------------- authors' modules

def authors_psp(encoders: types.ModuleType, helpers: types.ModuleType, small: bool) -> torch.nn.Module:
    """The authors' GradualStyleEncoder, with a ``latent_avg`` buffer as pSp holds it.

    Full size: ``GradualStyleEncoder(50, 'ir_se', opts)`` exactly. Small: the same class
    (its forward: taps at body indices 6/20/23, FPN, style order) with its parts rebuilt
    from the authors' blocks at narrower widths; the depth (3, 4, 14, 3) stays because
    that forward hard-codes the tap indices.
    """
    cfg = PSPEncoderConfig(**PSP_SMALL) if small else PSPEncoderConfig()
    opts = Namespace(input_nc=3, n_styles=cfg.n_styles)
    with torch.device("meta"):
        enc = encoders.GradualStyleEncoder(50, "ir_se", opts)
    if small:
        w, top = cfg.widths, cfg.widths[3]
        enc.input_layer = torch.nn.Sequential(torch.nn.Conv2d(3, w[0], (3, 3), 1, 1, bias=False),
                                              torch.nn.BatchNorm2d(w[0]), torch.nn.PReLU(w[0]))
        stages = [helpers.get_block(in_channel=w[max(i - 1, 0)], depth=w[i], num_units=n)
                  for i, n in enumerate(cfg.units)]
        enc.body = torch.nn.Sequential(*[helpers.bottleneck_IR_SE(b.in_channel, b.depth, b.stride)
                                         for stage in stages for b in stage])
        sides = [cfg.input_size // 16] * 3 + [cfg.input_size // 8] * 4 + [cfg.input_size // 4] * (cfg.n_styles - 7)
        enc.styles = torch.nn.ModuleList(encoders.GradualStyleBlock(top, cfg.style_dim, s) for s in sides)
        enc.latlayer1 = torch.nn.Conv2d(w[2], top, kernel_size=1)
        enc.latlayer2 = torch.nn.Conv2d(w[1], top, kernel_size=1)
    enc.register_buffer("latent_avg", torch.zeros(cfg.n_styles, cfg.style_dim, device="cpu" if small else "meta"))
    return enc


def psp_reference(enc: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """pSp.forward's codes with ``start_from_latent_avg`` (psp.py: ``codes + latent_avg.repeat(N, 1, 1)``)."""
    codes = enc(x)
    return codes + enc.latent_avg.repeat(codes.shape[0], 1, 1)


def batchnorm_rename(module: torch.nn.Module) -> dict[str, str]:
    """Seed BatchNorm weights like norms (≈1), though pSp's keys carry no norm hint.

    With ``seeded.py``'s default 0.02 for those 1-D weights every IR-SE shortcut BN
    shrinks the signal ~50×, and the codes barely depend on the input. The test applies
    the same rule to our module (same keys, so the same map).
    """
    return {f"{name}.weight": f"{name}.bn.weight" for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def seed_psp(module: torch.nn.Module) -> torch.nn.Module:
    return fill_seeded(module, SEED, rename=batchnorm_rename(module))


def shapes_of(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- outputs

def write_keys(out: Path, encoders: types.ModuleType, helpers: types.ModuleType, gru_mod: types.ModuleType) -> None:
    psp = shapes_of(authors_psp(encoders, helpers, small=False))
    with torch.device("meta"):
        gru = shapes_of(gru_mod.StyleGRU(feature_size=9216))
    for name, table in (("styleflow_psp_encoder", psp), ("styleflow_stylegru", gru)):
        path = out / f"keys_{name}.json"
        path.write_text(json.dumps(table, indent=0) + "\n")
        print(f"wrote {path} ({len(table)} keys)")


def _small_crops(n: int, size: int) -> torch.Tensor:
    """Smooth uint8 RGB face-sized test images ``[n, size, size, 3]`` (deterministic)."""
    g = torch.Generator().manual_seed(1234)
    coarse = torch.rand(n, 3, size // 8, size // 8, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    noise = 0.1 * torch.rand(n, 3, size, size, generator=g)
    return ((smooth * 0.9 + noise) * 255).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def psp_input(crops: torch.Tensor) -> torch.Tensor:
    """pSp's ToTensor + Normalize(0.5, 0.5): uint8 ``[N, H, W, 3]`` → float ``[N, 3, H, W]`` in [-1, 1]."""
    return (crops.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def _small_latents(n: int) -> torch.Tensor:
    """Synthetic W+ sequences ``[n, 32, rows, dim]``: a random walk, like codes of a moving face."""
    g = torch.Generator().manual_seed(4321)
    rows, dim = GRU_SMALL_STYLES
    steps = torch.randn(n, 32, rows, dim, generator=g)
    return steps.cumsum(dim=1) + torch.randn(n, 1, rows, dim, generator=g)


def write_goldens(out: Path, encoders: types.ModuleType, helpers: types.ModuleType,
                  gru_mod: types.ModuleType, loader_mod: types.ModuleType) -> None:
    from safetensors.torch import save_file

    # pSp encoder
    ref = seed_psp(authors_psp(encoders, helpers, small=True)).eval()
    crops = _small_crops(PSP_SMALL_BATCH, PSP_SMALL["input_size"])
    with torch.no_grad():
        codes = psp_reference(ref, psp_input(crops))
    meta = {"overrides": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in PSP_SMALL.items()}),
            "seed": str(SEED), "seeding": "fill_seeded(m, seed, rename={'<BatchNorm>.weight': '<BatchNorm>.bn.weight'})",
            "input": "crops uint8 RGB [N,H,W,3]; x = (crops/255 - 0.5)/0.5, NCHW",
            "source": "eladrich/pixel2style2pixel GradualStyleEncoder (small widths) + latent_avg"}
    path = out / "golden_styleflow_psp_encoder.safetensors"
    save_file({"crops": crops, "codes": codes.contiguous()}, str(path), metadata=meta)
    spread = (codes[0] - codes[1]).abs()
    print(f"wrote {path}: codes {tuple(codes.shape)}, |codes[0] - codes[1]| max {spread.max().item():.3f} "
          f"mean {spread.mean().item():.4f}")

    # StyleGRU
    cfg = GRU_SMALL
    ref_gru = gru_mod.StyleGRU(feature_size=cfg["input_size"], rnn_unit=cfg["hidden_size"], res_hidden=cfg["res_hidden"])
    fill_seeded(ref_gru, SEED).eval()
    latents = _small_latents(GRU_SMALL_BATCH)
    flat = latents.flatten(2)  # the authors' pickles hold [32, rows*dim] style-major rows
    flow = torch.stack([loader_mod.get_diff(clip) for clip in flat])
    with torch.no_grad():
        logits, embed = ref_gru(flow)
    logits = logits.squeeze(1)
    probs = torch.sigmoid(logits)
    meta = {"overrides": json.dumps(cfg), "seed": str(SEED),
            "input": "latents [N,32,18,2] float32; flow = get_diff(latents.flatten(2)) [N,31,36]",
            "source": "jongwook-Choi/StyleFlow StyleGRU/model/StyleGRU.py; probability = sigmoid (BCEWithLogitsLoss)"}
    path = out / "golden_styleflow_stylegru.safetensors"
    save_file({"latents": latents.contiguous(), "flow": flow.contiguous(), "embed": embed.contiguous(),
               "logits": logits.contiguous(), "probs": probs.contiguous()}, str(path), metadata=meta)
    print(f"wrote {path}: logits {[round(v, 3) for v in logits.tolist()]}, probs {[round(v, 3) for v in probs.tolist()]}")


def check_wrapper_layout(net_mod: types.ModuleType, gru_mod: types.ModuleType) -> None:
    """The stage-1 checkpoint keys are ``module.model.`` + the bare StyleGRU keys."""
    bare = gru_mod.StyleGRU(feature_size=36, rnn_unit=16, res_hidden=24)
    wrapped = torch.nn.DataParallel(net_mod.TripletNet(bare), device_ids=[])
    keys = list(wrapped.state_dict())
    assert keys == ["module.model." + k for k in bare.state_dict()], keys[:4]
    print(f"stage-1 wrapper layout: {len(keys)} keys, all 'module.model.' + bare key")


def run_full(encoders: types.ModuleType, helpers: types.ModuleType, gru_mod: types.ModuleType) -> None:
    """Full-size parity on CPU with seeded weights; prints max abs diffs."""
    torch.manual_seed(0)
    # pSp: one 256×256 frame.
    ref = authors_psp(encoders, helpers, small=False).to_empty(device="cpu")
    seed_psp(ref).eval()
    ours = PSPEncoder(PSPEncoderConfig()).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = psp_input(_small_crops(1, 256))
    with torch.no_grad():
        want, got = psp_reference(ref, x), ours(x)
        raw = want - ref.latent_avg
    print(f"pSp full: codes {tuple(got.shape)}, max|diff| = {(want - got).abs().max().item():.3e} "
          f"(codes-minus-latent_avg max|value| {raw.abs().max().item():.3f}, std {raw.std().item():.3f})")
    del ref, ours

    # StyleGRU: one 31×9216 flow; ours shares the authors' tensors (3 GB once, not twice).
    with torch.device("meta"):
        ref_gru = gru_mod.StyleGRU(feature_size=9216)
    ref_gru = fill_seeded(ref_gru.to_empty(device="cpu"), SEED).eval()
    with torch.device("meta"):
        ours_gru = StyleGRU(StyleGRUConfig())
    ours_gru.load_state_dict(ref_gru.state_dict(), strict=True, assign=True)
    ours_gru.eval()
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(1, 32, 18, 512, generator=g).cumsum(1) * 0.2
    flow = style_flow(latents)
    with torch.no_grad():
        want_logit, want_e = ref_gru(flow)
        got_e = ours_gru.embed(flow)
        got_logit = ours_gru.forward_logits(flow)
    want_logit = want_logit.squeeze(1)
    print(f"StyleGRU full: logit ref {want_logit.item():.5f} ours {got_logit.item():.5f}; "
          f"max|diff| logit {(want_logit - got_logit).abs().max().item():.3e}, "
          f"prob {(torch.sigmoid(want_logit) - torch.sigmoid(got_logit)).abs().max().item():.3e}, "
          f"E {(want_e - got_e).abs().max().item():.3e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", type=Path, default=Path("/work/ref"), help="folder with the authors' checkouts")
    ap.add_argument("--psp-ref", type=Path, default=None)
    ap.add_argument("--styleflow-ref", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "tests/models/data")
    ap.add_argument("--full", action="store_true", help="also run full-size parity on CPU")
    args = ap.parse_args()
    torch.set_num_threads(1)
    encoders, helpers = import_psp(args.psp_ref or args.ref / "eladrich+pixel2style2pixel")
    gru_mod, net_mod, loader_mod = import_stylegru(args.styleflow_ref or args.ref / "jongwook-Choi+StyleFlow")
    args.out.mkdir(parents=True, exist_ok=True)
    write_keys(args.out, encoders, helpers, gru_mod)
    write_goldens(args.out, encoders, helpers, gru_mod, loader_mod)
    check_wrapper_layout(net_mod, gru_mod)
    if args.full:
        run_full(encoders, helpers, gru_mod)


if __name__ == "__main__":
    main()
