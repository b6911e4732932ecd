"""Parity data for ``styleflow_truemedia`` from TrueMedia's deployed StyleFlow server.

Usage::

    python tools/parity/styleflow_truemedia.py --ref /work/ref/changyeon2+Truemedia-ML-Models \
        --out tests/models/data [--full]

``--ref`` is a checkout of changyeon2/Truemedia-ML-Models (or its ``StyleFlow/`` folder);
their modules are imported from there at run time, never copied. Writes

* ``keys_styleflow_truemedia.json``: key -> shape of their ``model/ftcn.py`` ``I3D8x8``
  (the content-only module ``custommodel.py`` imports) built at full size;
* ``golden_styleflow_truemedia.safetensors``: a small configuration of that module with
  seeded weights (``tests/models/seeded.py``), run clip by clip as their ``_predict`` does
  (batch 1), and their video score ``sigmoid(mean(stack(clip logits)))``. The inputs are
  not stored (they are ``seeded_tensor`` values the test regenerates); a probe of them
  is, so a change of the generator shows up as such.

``--full`` runs their server code at full size on the CPU: seeded weights saved as
``{'model': state_dict}`` to a ``true_best_1118.pth``, their ``CustomModel`` built and
loaded from it, and its ``_predict`` run on 256² PNG crops (two 32-frame clips) written
where it looks for them; ours is ``models.create_model("styleflow_truemedia",
checkpoint=that file)`` (strict) on the same PNGs through ``card.preprocess``. Prints the
max abs differences of the model inputs, the clip logits and the video score, and the
times (for FIDELITY.md).

Stand-ins, all for code the scored path does not run: fvcore/simplejson (as in
``styleflow_content.py``); ``preprocessing_utils`` (face detection and cropping; the crops
are written directly); ``requests`` (their URL download); ``Tensor.cuda`` becomes the identity during ``_predict`` (their
code moves each clip to CUDA unconditionally; this host has no GPU).
Tool-only dependencies: ``yacs``, ``einops`` (their imports), ``torchvision``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from styleflow_content import SEED_RENAME, install_stubs  # noqa: E402
from tests.models.seeded import fill_seeded, seeded_tensor  # noqa: E402

SEED = 0
#: Small configuration shared with tests/models/test_styleflow_truemedia.py (also in the
#: golden file's metadata): 2×2 trunk map, 4 time tokens of 128 channels.
SMALL: dict[str, int] = dict(width=8, clip_len=8, input_size=32, tte_heads=2, tte_dim_head=16, tte_mlp_dim=64)
SMALL_CLIPS = 3
# Per-clip brightness offsets (ImageNet-normalised units) so the clip logits spread (≈0.85)
# and the video score's definition (sigmoid of the mean logit, not the mean probability) is
# visible well above the tolerance.
CLIP_OFFSETS = (-3.0, 0.0, 3.0)
FULL_CLIPS = 2
PROBE = 16  # leading input values stored in the golden file


def small_video(seed: int = SEED) -> torch.Tensor:
    """The golden inputs: ``SMALL_CLIPS`` clips ``[n, 3, T, S, S]`` ~N(0, 1) (ImageNet-normalised
    scale) plus ``CLIP_OFFSETS``."""
    t, s = SMALL["clip_len"], SMALL["input_size"]
    video = seeded_tensor("input.video", (SMALL_CLIPS, 3, t, s, s), seed + 1)
    video = video * math.sqrt(3 * t * s * s)  # seeded_tensor scales by 1/sqrt(fan-in)
    return video + torch.tensor(CLIP_OFFSETS).view(-1, 1, 1, 1, 1)


def import_deployed(ref: Path) -> types.ModuleType:
    """Their ``model.ftcn`` (what ``custommodel.py`` imports), from the checkout."""
    root = ref / "StyleFlow" if (ref / "StyleFlow").is_dir() else ref
    install_stubs()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module("model.ftcn")


def build_deployed(mod: types.ModuleType, width: int = 64, clip_len: int = 32, input_size: int = 224,
                   tte_heads: int = 16, tte_dim_head: int = 64, tte_mlp_dim: int = 2048) -> Any:
    """Their content-only ``I3D8x8``.

    Full size: exactly their constructor. Small: only constants change — the
    ``WIDTH_PER_GROUP`` of their config text, and the head rebuilt from their own
    ``TransformerHead``/``TimeTransformer`` classes at the small width (their constructor
    hard-codes 1024 channels, 16 tokens, 16×64 heads, MLP 2048 and a 14×14 pool).
    """
    cfg = mod.my_cfg
    cfg.model.transformer.dim = -1  # their head writes its width back into the global config
    full = (width, clip_len, input_size, tte_heads, tte_dim_head, tte_mlp_dim) == (64, 32, 224, 16, 64, 2048)
    original_text: str = getattr(mod, "config_text")
    setattr(mod, "config_text", original_text.replace("WIDTH_PER_GROUP: 64", f"WIDTH_PER_GROUP: {width}"))
    try:
        model = mod.I3D8x8()
    finally:
        setattr(mod, "config_text", original_text)
    if not full:
        channels, tokens = width * 16, clip_len // 2
        cfg.model.transformer.dim = -1
        head = mod.TransformerHead(spatial_size=input_size // 16, time_size=tokens, in_channels=channels)
        head.time_T = mod.TimeTransformer(num_patches=tokens, num_classes=1, dim=channels, depth=1,
                                          heads=tte_heads, mlp_dim=tte_mlp_dim, dim_head=tte_dim_head,
                                          dropout=0.1, emb_dropout=0.1)
        model.resnet.head = head
    cfg.model.transformer.dim = -1
    return model.eval()


@torch.no_grad()
def deployed_scores(model: Any, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Their ``_predict`` loop on prepared clips: one forward per clip (batch 1), then
    ``sigmoid(torch.mean(torch.stack(preds)))`` → (clip logits ``[n]``, video score)."""
    preds = [model(clip.unsqueeze(0)) for clip in clips]
    return torch.stack(preds).reshape(-1), torch.sigmoid(torch.mean(torch.stack(preds)))


def write_keys(mod: types.ModuleType, out: Path) -> None:
    model = build_deployed(mod)
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    path = out / "keys_styleflow_truemedia.json"
    path.write_text(json.dumps(keys, indent=1) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{path}: {len(keys)} keys, {n_params:,} parameters (TrueMedia's model/ftcn.py I3D8x8, full size)")


def write_golden(mod: types.ModuleType, out: Path) -> None:
    from safetensors.torch import save_file

    model = fill_seeded(build_deployed(mod, **SMALL), SEED, SEED_RENAME)
    video = small_video()
    logits, score = deployed_scores(model, video)
    with torch.no_grad():
        batched = model(video.clone())
    print("golden clip logits", logits.tolist(), "batched", batched.tolist(), "video score", score.item())
    path = out / "golden_styleflow_truemedia.safetensors"
    save_file({"logits": logits.contiguous(), "video_score": score.reshape(1).contiguous(),
               "video_probe": video.reshape(-1)[:PROBE].contiguous(), "video_sum": video.sum().reshape(1)},
              str(path), metadata={
                  "model": "styleflow_truemedia", "overrides": json.dumps(SMALL), "seed": str(SEED),
                  "rename": json.dumps(SEED_RENAME), "clips": str(SMALL_CLIPS),
                  "input": "tools/parity/styleflow_truemedia.small_video(): seeded_tensor('input.video', "
                           "[clips, 3, T, S, S], seed + 1) * sqrt(3*T*S*S) + per-clip offsets; "
                           "video_probe = its first values",
                  "clip_offsets": json.dumps(CLIP_OFFSETS),
                  "source": "TrueMedia's model/ftcn.py I3D8x8, one clip per forward, video score "
                            "sigmoid(mean(stack(logits))) as custommodel.py; tools/parity/styleflow_truemedia.py"})
    print(f"{path}: {path.stat().st_size} bytes")


# ----------------------------------------------------------------------------- full size


def _astronaut_crops(n: int) -> np.ndarray:
    """``n`` uint8 RGB 256² crops of a public-domain photo, drifting a pixel per frame."""
    from skimage import data

    image = data.astronaut()  # 512 × 512 × 3
    return np.stack([image[20 + i // 2:276 + i // 2, 120 + i:376 + i] for i in range(n)])


@contextlib.contextmanager
def _cpu_only_cuda_calls() -> Iterator[None]:
    """Their ``_predict`` calls ``clip.cuda(non_blocking=True)``; on a CPU host keep it there."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def import_custommodel(ref: Path, checkpoint: Path, data_root: Path) -> types.ModuleType:
    """Their ``custommodel`` with its paths pointed at ``checkpoint`` and ``data_root``."""
    prep = types.ModuleType("preprocessing_utils")
    prep.__dict__.update(crop_face_from_video=lambda *a, **k: None, set_result=lambda *a, **k: {})
    sys.modules["preprocessing_utils"] = prep
    # Only their download_file uses requests (not on the scored path); the real package
    # cannot import under the simplejson stand-in.
    sys.modules.setdefault("requests", types.ModuleType("requests"))
    import_deployed(ref)
    cm = importlib.import_module("custommodel")
    setattr(cm, "pth_path", {"content_pth": str(checkpoint)})
    setattr(cm, "data_root", str(data_root))
    return cm


def full_parity(ref: Path, mod: types.ModuleType) -> None:
    from PIL import Image

    import models

    theirs = fill_seeded(build_deployed(mod), SEED, SEED_RENAME)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "true_best_1118.pth"
        torch.save({"model": theirs.state_dict(), "epoch": 0}, ckpt)
        crops = _astronaut_crops(32 * FULL_CLIPS)
        image_root = Path(tmp) / "data" / "video" / "crop_images"
        image_root.mkdir(parents=True)
        for j, crop in enumerate(crops):
            Image.fromarray(crop).save(image_root / f"00_{j:04}.png")

        cm = import_custommodel(ref, ckpt, Path(tmp) / "data")
        server = cm.CustomModel()
        for k, v in theirs.state_dict().items():  # their strict=False load took every tensor
            assert torch.equal(server.model.state_dict()[k], v), k
        inputs: list[torch.Tensor] = []
        clip_logits: list[torch.Tensor] = []
        server.model.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach().clone()))
        server.model.register_forward_hook(lambda m, args, out: clip_logits.append(out.detach().clone()))
        t0 = time.perf_counter()
        with _cpu_only_cuda_calls():
            their_score = server._predict("/videos/video.mp4", clip_size=32, max_frames=110)
        t_theirs = time.perf_counter() - t0

        t0 = time.perf_counter()
        ours: Any = models.create_model("styleflow_truemedia", checkpoint=ckpt)
        t_load = time.perf_counter() - t0
        report = ours.load_report
        paths = sorted(image_root.iterdir())
        png = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
        x = ours.card.preprocess(png.reshape(FULL_CLIPS, 32, 256, 256, 3))
        t0 = time.perf_counter()
        with torch.no_grad():
            our_logits = torch.cat([ours.forward_logits(x[i:i + 1]) for i in range(FULL_CLIPS)])
        our_score = ours.video_score(our_logits)
        t_ours = time.perf_counter() - t0

    their_logits = torch.cat(clip_logits)
    d_input = max((a - b).abs().max().item() for a, b in zip(inputs, x.split(1)))
    d_logit = (their_logits - our_logits).abs().max().item()
    d_score = abs(their_score.item() - our_score.item())
    mean_prob = torch.sigmoid(our_logits).mean().item()
    result = {
        "input": f"{FULL_CLIPS} clips x [1, 3, 32, 224, 224] from 256x256 PNG crops",
        "load": str(report), "their_clip_logits": their_logits.tolist(), "our_clip_logits": our_logits.tolist(),
        "their_video_score": their_score.item(), "our_video_score": our_score.item(),
        "mean_of_clip_probabilities": mean_prob,
        "max_abs_diff_input": d_input, "max_abs_diff_logit": d_logit, "abs_diff_video_score": d_score,
        "seconds_their_predict": round(t_theirs, 1), "seconds_ours_forward": round(t_ours, 1),
        "seconds_ours_load": round(t_load, 2), "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", type=Path, default=Path("/work/ref/changyeon2+Truemedia-ML-Models"))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "models" / "data")
    parser.add_argument("--full", action="store_true", help="also run their server code at full size on the CPU")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    mod = import_deployed(args.ref)
    args.out.mkdir(parents=True, exist_ok=True)
    write_keys(mod, args.out)
    write_golden(mod, args.out)
    if args.full:
        full_parity(args.ref, mod)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
