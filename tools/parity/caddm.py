"""Parity data for the CADDM family, produced from the authors' own modules.

    python tools/parity/caddm.py --ref /work/ref/megvii-research+CADDM --out tests/models/data [--full]

(a) ``keys_<name>.json``: key → shape of the authors' full-size ``CADDM`` (built on meta).
(b) ``golden_<name>.safetensors``: a small configuration of the authors' module filled with
    ``tests/models/seeded.py`` weights, its input (uint8, upsampled in the test) and its
    logits and probabilities.
(c) ``--full``: full-size B4 and ResNet-34 (and B3 with ``--full-b3``) on CPU, seeded weights,
    one 224 px input: max abs difference of logits and probability, ours vs theirs.

The authors' constructors fetch ImageNet weights (``from_pretrained`` reads hard-coded
files, ``resnet34(pretrained=True)`` downloads), so this script swaps those two calls for
weight-less builds; their block, ADM and forward code run unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import models  # noqa: E402
from models.layers.efficientnet import SameConv2d  # noqa: E402
from tests.models.seeded import fill_seeded  # noqa: E402

NAMES = {"caddm_efficientnet_b4": "efficientnet-b4", "caddm_efficientnet_b3": "efficientnet-b3",
         "caddm_resnet34": "resnet34"}

# Small configurations for the golden files. EfficientNet-B4 runs at the deployment size
# 224, where symmetric padding keeps every map size but shifts every stride-2 window (the
# golden logits then differ by ~0.1). B3 runs at 230 px: its stride-2 inputs 115 and 57 are
# odd, where the authors' static padding (fixed for 300 px) differs from TF's dynamic "same"
# padding and from symmetric padding (both would give 8x8 maps and fail).
#
GOLDEN: dict[str, dict[str, Any]] = {
    "caddm_efficientnet_b4": dict(overrides={"width_coefficient": 0.1, "depth_coefficient": 0.5},
                                  low=112, upsample=2, seed=0, input_scale=1 / 64, running_var_scale=0.4),
    "caddm_efficientnet_b3": dict(overrides={"width_coefficient": 0.15, "depth_coefficient": 0.4},
                                  low=115, upsample=2, seed=1, input_scale=1 / 64, running_var_scale=0.4),
    "caddm_resnet34": dict(overrides={"layers": [1, 2, 1, 1], "widths": [16, 32, 64, 128]},
                           low=112, upsample=2, seed=0, input_scale=1 / 16, running_var_scale=1.0),
}
BATCH = 2


def import_reference(ref: Path) -> tuple[Any, Any]:
    """The authors' ``backbones.caddm`` and ``backbones.resnet`` modules."""
    sys.path.insert(0, str(ref))
    import backbones.caddm as ref_caddm
    import backbones.resnet as ref_resnet

    return ref_caddm, ref_resnet


def _resnet(ref_resnet: Any, layers: list[int], widths: list[int]) -> nn.Module:
    """Their ``ResNet`` with their blocks; stage widths re-made through their ``_make_layer``."""
    net = ref_resnet.ResNet(ref_resnet.BasicBlock, list(layers))
    if list(widths) != [64, 128, 256, 512]:
        net.inplanes = widths[0]
        net.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        net.bn1 = nn.BatchNorm2d(widths[0])
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(net, f"layer{i + 1}", net._make_layer(ref_resnet.BasicBlock, w, n, stride=1 if i == 0 else 2))
        net.fc = nn.Linear(widths[3], 1000)
        net.out_num_features = widths[3]
    return net


@contextlib.contextmanager
def _weightless(ref_caddm: Any, ref_resnet: Any, overrides: dict[str, Any]) -> Iterator[None]:
    eff = ref_caddm.EfficientNet
    saved_pretrained, saved_r34 = eff.__dict__["from_pretrained"], ref_caddm.resnet34
    coeffs = {k: v for k, v in overrides.items() if k in ("width_coefficient", "depth_coefficient")}

    def from_pretrained(cls: Any, model_name: str, out_size: Any = None, **_: Any) -> nn.Module:
        return cls.from_name(model_name, override_params=coeffs or None, out_size=out_size)

    def resnet34(pretrained: bool = False) -> nn.Module:
        return _resnet(ref_resnet, overrides.get("layers", [3, 4, 6, 3]), overrides.get("widths", [64, 128, 256, 512]))

    eff.from_pretrained = classmethod(from_pretrained)
    ref_caddm.resnet34 = resnet34
    try:
        yield
    finally:
        eff.from_pretrained = saved_pretrained
        ref_caddm.resnet34 = saved_r34


def build_reference(ref_caddm: Any, ref_resnet: Any, name: str, overrides: dict[str, Any]) -> nn.Module:
    with _weightless(ref_caddm, ref_resnet, overrides):
        return ref_caddm.CADDM(2, backbone=NAMES[name]).eval()


def reference_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pre-softmax logits of the authors' module: its eval output is ``softmax(fc(...))``,
    so the ``fc`` input is captured with a hook and ``fc`` applied to it."""
    captured: list[torch.Tensor] = []
    handle = net.fc.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().clone()))
    try:
        net(x)
    finally:
        handle.remove()
    return captured[0]


def golden_input(low: torch.Tensor, upsample: int, scale: float) -> torch.Tensor:
    """uint8 ``[N, 3, h, w]`` → float ``[N, 3, h·u, w·u]`` by pixel repetition, times ``scale``."""
    return low.float().repeat_interleave(upsample, dim=-2).repeat_interleave(upsample, dim=-1) * scale


def seeded(model: nn.Module, seed: int, running_var_scale: float = 1.0) -> nn.Module:
    """``fill_seeded`` then every BatchNorm ``running_var`` times ``running_var_scale``."""
    fill_seeded(model, seed=seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.mul_(running_var_scale)
    return model


def write_keys(ref_caddm: Any, ref_resnet: Any, out: Path) -> None:
    for name in NAMES:
        with torch.device("meta"):
            net = build_reference(ref_caddm, ref_resnet, name, {})
        shapes = {k: list(v.shape) for k, v in net.state_dict().items()}
        (out / f"keys_{name}.json").write_text(json.dumps(shapes, indent=0) + "\n")
        params = sum(p.numel() for p in net.parameters())
        print(f"keys_{name}.json: {len(shapes)} keys, {params:,} parameters")


def write_golden(ref_caddm: Any, ref_resnet: Any, out: Path) -> None:
    for name, spec in GOLDEN.items():
        net = seeded(build_reference(ref_caddm, ref_resnet, name, spec["overrides"]), spec["seed"],
                     spec["running_var_scale"])
        g = torch.Generator().manual_seed(1234 + spec["seed"])
        low = torch.randint(0, 256, (BATCH, 3, spec["low"], spec["low"]), generator=g, dtype=torch.uint8)
        x = golden_input(low, spec["upsample"], spec["input_scale"])
        with torch.no_grad():
            probs = net(x)[:, 1].contiguous()
            logits = reference_logits(net, x)
        meta = {"model": name, "overrides": json.dumps(spec["overrides"]), "seed": str(spec["seed"]),
                "upsample": str(spec["upsample"]), "input_scale": repr(spec["input_scale"]),
                "running_var_scale": repr(spec["running_var_scale"]),
                "source": "megvii-research/CADDM b3f7619, seeded weights"}
        path = out / f"golden_{name}.safetensors"
        save_file({"crops": low, "logits": logits, "probs": probs}, str(path), metadata=meta)
        print(f"{path.name}: input {tuple(x.shape)}, logits {logits.tolist()}, probs {probs.tolist()}, "
              f"{path.stat().st_size} bytes")


# Full-size runs: BatchNorm running_var scale and input scale chosen so that the logits
# depend on the input without exploding (seeded deep nets switch from vanishing to
# exploding signal within a narrow band of gains).
FULL: dict[str, dict[str, float]] = {
    "caddm_efficientnet_b4": dict(input_scale=1 / 16, running_var_scale=0.7),
    "caddm_efficientnet_b3": dict(input_scale=1 / 16, running_var_scale=0.6),
    "caddm_resnet34": dict(input_scale=1 / 64, running_var_scale=1.0),
}


def full_parity(ref_caddm: Any, ref_resnet: Any, name: str) -> None:
    """Full-size ours vs theirs on one 224 px input; prints max abs diffs."""
    spec = FULL[name]
    g = torch.Generator().manual_seed(7)
    x = torch.randint(0, 256, (1, 3, 224, 224), generator=g, dtype=torch.uint8).float() * spec["input_scale"]
    t0 = time.time()
    with torch.no_grad():
        net = seeded(build_reference(ref_caddm, ref_resnet, name, {}), 0, spec["running_var_scale"])
        ref_logits = reference_logits(net, x)
        ref_probs = net(x)[:, 1]
        del net
        ours = seeded(models.create_model(name), 0, spec["running_var_scale"])
        logits = ours.forward_logits(x)
        probs = ours(x)
        line = (f"{name}: logits ref {ref_logits.tolist()} ours {logits.tolist()}, p_fake ref "
                f"{ref_probs.item():.6f}; max|dlogit| {(logits - ref_logits).abs().max().item():.3e}, "
                f"max|dprob| {(probs - ref_probs).abs().max().item():.3e}")
        convs = [m for m in ours.modules() if isinstance(m, SameConv2d)]
        if convs:  # how far off the symmetric-padding trap would be
            for m in convs:
                p = (m.kernel_size[0] - 1) // 2
                m.pad = (p, p, p, p)
            wrong = ours.forward_logits(x)
            line += f"; symmetric padding would give max|dlogit| {(wrong - ref_logits).abs().max().item():.3e}"
    print(line + f" ({time.time() - t0:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, required=True, help="checkout of megvii-research/CADDM")
    parser.add_argument("--out", type=Path, required=True, help="where keys_*.json and golden_*.safetensors go")
    parser.add_argument("--full", action="store_true", help="also run full-size parity for B4 and ResNet-34")
    parser.add_argument("--full-b3", action="store_true", help="also run full-size parity for B3")
    parser.add_argument("--skip-data", action="store_true", help="only run the --full checks")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ref_caddm, ref_resnet = import_reference(args.ref)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.skip_data:
        write_keys(ref_caddm, ref_resnet, args.out)
        write_golden(ref_caddm, ref_resnet, args.out)
    if args.full:
        for name in ("caddm_efficientnet_b4", "caddm_resnet34"):
            full_parity(ref_caddm, ref_resnet, name)
    if args.full_b3:
        full_parity(ref_caddm, ref_resnet, "caddm_efficientnet_b3")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
