"""Parity data for ``styleflow_content`` from the authors' stage-2 module (TrueMedia copy).

Usage::

    python tools/parity/styleflow_content.py --ref /work/ref/changyeon2+Truemedia-ML-Models \
        --out tests/models/data [--full]

Writes ``keys_styleflow_content.json`` (key -> shape of the authors' ``I3D8x8`` built at
full size), ``golden_styleflow_content.safetensors`` (small configuration, seeded
weights from ``tests/models/seeded.py``) and ``golden_styleflow_content_readings.safetensors``
(the logits of the same model and inputs under each of the three ``STA`` calls of the
commented lines). ``--full`` also runs the full-size model (one 32×224² clip, one
16384-d style embedding) through the authors' module and ours on CPU and prints the max
abs difference of logit and probability.

The authors' ``TransformerHead.forward`` has its style path commented out. This script
drives their own sub-modules (trunk, ``pool``, ``STA``, ``time_T``) in the wiring those
commented lines describe (see ``authors_forward``; ``READINGS`` are the file's three
``STA`` calls), which is what ``models.styleflow`` implements (``sam_reading``).
The deployed, content-only model is ``tools/parity/styleflow_truemedia.py``'s.

Tool-only dependencies (not needed by the test suite): ``yacs`` and ``einops``
(``pip install yacs einops``). ``fvcore`` and ``simplejson``, which the authors' slowfast
package imports for logging/registry/initialisation only, are replaced by stubs here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.models.seeded import fill_seeded, seeded_tensor  # noqa: E402

SEED = 0
# Small configuration shared with tests/models/test_styleflow.py (also stored in the
# golden file's metadata).
SMALL: dict[str, int] = dict(width=8, clip_len=6, input_size=32, tte_heads=2, tte_dim_head=16, tte_mlp_dim=64)
SMALL_BATCH = 2
# seeded.py gives 1-D weights whose key names no norm 0.02·randn; the final LayerNorm of the
# head (``mlp_head.0``) would then shrink every logit to ~0.02. Seed it as a norm weight.
SEED_RENAME = {"resnet.head.time_T.mlp_head.0.weight": "resnet.head.time_T.mlp_head.0.norm.weight"}


def install_stubs() -> None:
    """Stand-ins for fvcore / simplejson, used by slowfast only for registry, logging, init."""
    from yacs.config import CfgNode

    def module(name: str, **attrs: Any) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    class Registry:
        def __init__(self, name: str) -> None:
            self._obj: dict[str, Any] = {}

        def register(self, obj: Any = None) -> Any:
            def deco(o: Any) -> Any:
                self._obj[o.__name__] = o
                return o
            return deco(obj) if obj is not None else deco

        def get(self, name: str) -> Any:
            return self._obj[name]

    def c2_msra_fill(m: nn.Module) -> None:  # only an initialiser; weights are seeded later
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")  # type: ignore[arg-type]
        if m.bias is not None:  # type: ignore[union-attr]
            nn.init.zeros_(m.bias)  # type: ignore[arg-type]

    module("fvcore")
    module("fvcore.common")
    module("fvcore.common.config", CfgNode=CfgNode)
    module("fvcore.common.registry", Registry=Registry)
    module("fvcore.common.file_io", PathManager=None)
    module("fvcore.nn")
    module("fvcore.nn.weight_init", c2_msra_fill=c2_msra_fill)
    module("simplejson", dumps=json.dumps)


def import_authors(ref: Path) -> types.ModuleType:
    """Import ``StyleFlow/model/ftcn (for Styleflow).py`` from the TrueMedia checkout."""
    root = ref / "StyleFlow" if (ref / "StyleFlow").is_dir() else ref
    install_stubs()
    sys.path.insert(0, str(root))
    path = root / "model" / "ftcn (for Styleflow).py"
    spec = importlib.util.spec_from_file_location("model.ftcn_for_styleflow", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "model"
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def build_authors(mod: types.ModuleType, width: int = 64, clip_len: int = 32, input_size: int = 224,
                  tte_heads: int = 16, tte_dim_head: int = 64, tte_mlp_dim: int = 2048) -> Any:
    """The authors' ``I3D8x8`` (stop_point 5, depth-1 TimeTransformer, ``STA``).

    At full size this is exactly their constructor. A small configuration edits only
    constants: the ``WIDTH_PER_GROUP`` of their config text, and the head rebuilt from
    their own ``TransformerHead``/``TimeTransformer``/``STA`` classes at the small width
    (their head hard-codes 1024 channels, 16×64 heads, MLP 2048 and a 14×14 pool).
    """
    cfg = mod.my_cfg
    cfg.model.transformer.dim = -1  # their head writes its width back into the global config
    full = (width, clip_len, input_size, tte_heads, tte_dim_head, tte_mlp_dim) == (64, 32, 224, 16, 64, 2048)
    spatial_pool = input_size // 16  # trunk stride 16: their AvgPool3d((1,14,14)) covers the whole map
    original_text: str = getattr(mod, "config_text")
    setattr(mod, "config_text", original_text.replace("WIDTH_PER_GROUP: 64", f"WIDTH_PER_GROUP: {width}"))
    try:
        model = mod.I3D8x8()
    finally:
        setattr(mod, "config_text", original_text)
    if not full:
        channels, tokens = width * 16, clip_len // 2
        cfg.model.transformer.dim = -1
        head = mod.TransformerHead(spatial_size=spatial_pool, time_size=tokens, in_channels=channels)
        head.time_T = mod.TimeTransformer(num_patches=tokens, num_classes=1, dim=channels, depth=1,
                                          heads=tte_heads, mlp_dim=tte_mlp_dim, dim_head=tte_dim_head,
                                          dropout=0.1, emb_dropout=0.1)
        for name in ("w_q", "w_k", "w_v", "lp"):
            setattr(head.STA, name, nn.Linear(channels, channels))
        model.resnet.head = head
    cfg.model.transformer.dim = -1
    return model.eval()


#: The three ``STA`` calls of the commented lines, as written there (x_c: content tokens,
#: codes: the style embedding reshaped to the tokens' shape) -> (query, key, value).
READINGS: dict[str, Any] = {
    "content_style_style": lambda x_c, codes: (x_c, codes, codes),    # codes, _ = self.STA(x_c, codes, codes)
    "content_content_style": lambda x_c, codes: (x_c, x_c, codes),    # codes, _ = self.STA(x_c, x_c, codes)
    "style_style_content": lambda x_c, codes: (codes, codes, x_c),    # codes, _ = self.STA(codes, codes, x_c)
}


def _styled_head_forward(head: Any, style: torch.Tensor, reading: str, x: list[torch.Tensor]) -> torch.Tensor:
    """Their ``TransformerHead.forward`` with the commented ``ftcn + StyleGRU`` / ``SAM``
    lines switched on: tokens -> ``STA(...)`` per ``reading`` -> add -> ``time_T``."""
    x0 = head.pool(x[0])
    tokens = x0.reshape(-1, head.in_channels, head.num_patches).permute(0, 2, 1)
    x_c = tokens.clone()
    codes = style.reshape(x_c.size())
    codes, _ = head.STA(*READINGS[reading](x_c, codes))
    return head.time_T(tokens + codes)


@torch.no_grad()
def authors_forward(model: Any, video: torch.Tensor, style: torch.Tensor,
                    reading: str = "content_style_style") -> torch.Tensor:
    """Logit ``[N]`` of the authors' module for ``video`` [N,3,T,H,W] and style ``[N, D]``."""
    head = model.resnet.head
    head.forward = partial(_styled_head_forward, head, style, reading)
    try:
        return model(video.clone())
    finally:
        del head.forward


def key_shapes(model: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def write_keys(mod: types.ModuleType, out: Path) -> None:
    model = build_authors(mod)
    keys = key_shapes(model)
    path = out / "keys_styleflow_content.json"
    path.write_text(json.dumps(keys, indent=1) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {len(keys)} keys, {n_params:,} parameters (authors' I3D8x8 at full size)")


def write_golden(mod: types.ModuleType, out: Path) -> None:
    from safetensors.torch import save_file

    model = fill_seeded(build_authors(mod, **SMALL), SEED, SEED_RENAME)
    tokens, channels = SMALL["clip_len"] // 2, 16 * SMALL["width"]
    size = SMALL["input_size"]
    video = seeded_tensor("input.video", (SMALL_BATCH, 3, SMALL["clip_len"], size, size), SEED + 1)
    video = video * (3 * 3 * size * size * SMALL["clip_len"]) ** 0.5  # seeded_tensor scales by 1/sqrt(fan-in)
    style = seeded_tensor("input.style", (SMALL_BATCH, tokens * channels), SEED + 1)
    style = style * (tokens * channels) ** 0.5
    logits = authors_forward(model, video, style)
    probs = torch.sigmoid(logits)
    print("golden logits", logits.tolist(), "probabilities", probs.tolist())
    path = out / "golden_styleflow_content.safetensors"
    save_file({"video": video.contiguous(), "style": style.contiguous(), "logits": logits, "probs": probs},
              str(path), metadata={
                  "model": "styleflow_content", "overrides": json.dumps(SMALL), "seed": str(SEED),
                  "rename": json.dumps(SEED_RENAME),
                  "input": "video [N,3,T,S,S] ~N(0,1) (ImageNet-normalised scale), style [N,D] ~N(0,1)",
                  "source": "authors' I3D8x8 (TrueMedia copy) with the commented SAM lines switched on; "
                            "tools/parity/styleflow_content.py"})
    print(f"{path}: {path.stat().st_size} bytes")
    write_readings_golden(model, video, style, out)


def write_readings_golden(model: Any, video: torch.Tensor, style: torch.Tensor, out: Path) -> None:
    """Logits of the golden model and inputs under each ``STA`` call (a few bytes: the
    inputs are those of ``golden_styleflow_content.safetensors``)."""
    from safetensors.torch import save_file

    logits = {f"logits_{name}": authors_forward(model, video, style, name).contiguous() for name in READINGS}
    for name, value in logits.items():
        print(name, value.tolist())
    path = out / "golden_styleflow_content_readings.safetensors"
    save_file(logits, str(path), metadata={
        "model": "styleflow_content", "inputs": "video and style of golden_styleflow_content.safetensors",
        "overrides": json.dumps(SMALL), "seed": str(SEED), "rename": json.dumps(SEED_RENAME),
        "source": "authors' I3D8x8 (TrueMedia copy), each of the three commented STA calls switched on; "
                  "tools/parity/styleflow_content.py"})
    print(f"{path}: {path.stat().st_size} bytes")


def full_parity(mod: types.ModuleType) -> None:
    import models

    theirs = fill_seeded(build_authors(mod), SEED, SEED_RENAME)
    ours: Any = fill_seeded(models.create_model("styleflow_content"), SEED, SEED_RENAME)
    video = torch.randn(1, 3, 32, 224, 224, generator=torch.Generator().manual_seed(1))
    style = torch.randn(1, 16384, generator=torch.Generator().manual_seed(2))
    ref = authors_forward(theirs, video, style)
    with torch.no_grad():
        got = ours.forward_logits(video, style)
    print(f"full size: authors' logit {ref.tolist()}, ours {got.tolist()}")
    print(f"max abs diff logit {(ref - got).abs().max().item():.3e}, "
          f"probability {(torch.sigmoid(ref) - torch.sigmoid(got)).abs().max().item():.3e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, default=Path("/work/ref/changyeon2+Truemedia-ML-Models"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "models" / "data")
    parser.add_argument("--full", action="store_true", help="also run the full-size CPU parity check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    mod = import_authors(args.ref)
    args.out.mkdir(parents=True, exist_ok=True)
    write_keys(mod, args.out)
    write_golden(mod, args.out)
    if args.full:
        full_parity(mod)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
