"""StA (``sta_clip_vitl14``): layout, batching, golden parity, checkpoints, preprocessing.

Golden data and key lists come from the authors' module (YZY-stack/StA4Deepfake,
``training/detectors/clip_adapter_detector.py``) via ``tools/parity/sta.py``; the authors'
outputs there were computed one clip per forward pass, the only way their
cross-attention is correct.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from safetensors import safe_open

import models
from models.card import normalize_crops
from models.card import ModelCard
from models.sta import CLIP_MEAN, CLIP_STD, StA
from tests.models.seeded import fill_seeded

NAME = "sta_clip_vitl14"
DATA = Path(__file__).parent / "data"
SMALL: dict[str, Any] = dict(img_size=28, patch_size=7, width=64, layers=2, heads=4, adapter_width=32, num_frames=8)

torch.set_num_threads(1)


def _small_model(seed: int = 0, **extra: Any) -> StA:
    return cast(StA, fill_seeded(models.create_model(NAME, **{**SMALL, **extra}), seed).eval())


def _load(checkpoint: Path) -> StA:
    return cast(StA, models.create_model(NAME, checkpoint=checkpoint, **SMALL))


def _card() -> ModelCard:
    return cast(StA, models.create_model(NAME, device="meta")).card


def _clips(n: int, cfg: dict[str, Any] = SMALL, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, cfg["num_frames"], 3, cfg["img_size"], cfg["img_size"], generator=g)


def _golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DATA / f"golden_{NAME}.safetensors"), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


# 1. full-size layout ---------------------------------------------------------------


def test_full_size_keys_and_shapes_match_the_authors() -> None:
    expected = json.loads((DATA / f"keys_{NAME}.json").read_text())
    model = models.create_model(NAME, device="meta")
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 2110
    assert got == expected
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 223.8e6) / 223.8e6 < 0.01, n


# 2. small configuration: batching ----------------------------------------------------


def test_batched_forward_equals_per_clip_forward() -> None:
    model = _small_model()
    x = _clips(3)
    with torch.no_grad():
        batched = model.forward_logits(x)
        single = torch.cat([model.forward_logits(x[i:i + 1]) for i in range(3)])
        probs = model(x)
    assert batched.shape == (3, 2) and probs.shape == (3,) and probs.dtype == torch.float32
    assert torch.allclose(batched, single, atol=1e-5, rtol=0)
    assert torch.allclose(probs, torch.softmax(batched, 1)[:, 1], atol=1e-7)
    assert bool(((probs >= 0) & (probs <= 1)).all())


def test_clip_length_is_configurable_and_checked() -> None:
    model = _small_model(num_frames=4)
    with torch.no_grad():
        assert model(_clips(2, {**SMALL, "num_frames": 4})).shape == (2,)
        with pytest.raises(ValueError, match="4"):
            model(_clips(1))


# 3. golden parity with the authors' module --------------------------------------------


def test_golden_parity_with_the_authors_batch_1_outputs() -> None:
    tensors, meta = _golden()
    overrides = json.loads(meta["overrides"])
    assert overrides == SMALL
    model = _small_model(int(meta["seed"]))
    size = overrides["img_size"]
    x = normalize_crops(tensors["crops"], crop_size=size, input_size=size, colour_order="RGB",
                        scale=255.0, mean=CLIP_MEAN, std=CLIP_STD)
    with torch.no_grad():
        logits = model.forward_logits(x)  # all clips in one batch
        probs = model(x)
    want_logits, want_probs = tensors["logits"], tensors["probs"]
    # The reference is not saturated, so the comparison means something.
    assert bool(((want_probs > 0.05) & (want_probs < 0.95)).all())
    assert (want_logits[:, 1] - want_logits[:, 0]).std() > 0.01
    assert (logits - want_logits).abs().max().item() <= 1e-4
    assert (probs - want_probs).abs().max().item() <= 1e-4
    # The authors' own batched run mixes clips; ours must not reproduce that.
    assert (logits - tensors["authors_batched_logits"]).abs().max().item() > 1e-3


# 4. checkpoints in the authors' layouts -------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "module."], ids=["flat", "ddp"])
def test_authors_layouts_load_strictly(tmp_path: Path, prefix: str) -> None:
    ref = _small_model(seed=3)
    path = tmp_path / "sta_best.pth"
    torch.save({prefix + k: v for k, v in ref.state_dict().items()}, path)
    model = _load(path)
    report = model.load_report
    assert isinstance(report, models.LoadReport)
    assert report.ok and report.loaded == len(ref.state_dict())
    x = _clips(2)
    with torch.no_grad():
        assert torch.equal(model.forward_logits(x), ref.forward_logits(x))


def test_wrong_shape_missing_and_unknown_keys_are_reported(tmp_path: Path) -> None:
    state = _small_model().state_dict()
    cases = {
        "backbone.temporal_embedding": {**state, "backbone.temporal_embedding": torch.zeros(1, 4, SMALL["width"])},
        "head.fc_cls.bias": {k: v for k, v in state.items() if k != "head.fc_cls.bias"},
        "backbone.proj": {**state, "backbone.proj": torch.zeros(SMALL["width"], 8)},
    }
    for key, bad in cases.items():
        path = tmp_path / "bad.pth"
        torch.save(bad, path)
        with pytest.raises(models.CheckpointError, match=key.replace(".", r"\.")):
            models.create_model(NAME, checkpoint=path, **SMALL)
    torch.save({"state": {"nested": 1}}, tmp_path / "wrapped.pth")
    with pytest.raises(models.CheckpointError, match="flat state dict"):
        models.create_model(NAME, checkpoint=tmp_path / "wrapped.pth", **SMALL)


def test_conversion_to_safetensors_round_trips(tmp_path: Path) -> None:
    ref = _small_model(seed=5)
    src = tmp_path / "sta_best.pth"
    torch.save({"module." + k: v for k, v in ref.state_dict().items()}, src)
    dst = tmp_path / "sta.safetensors"
    digest = models.convert_checkpoint(NAME, src, dst, **SMALL)
    assert digest == models.sha256_file(dst)
    model = _load(dst)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


# 5. card and preprocessing ---------------------------------------------------------------


def test_preprocess_matches_the_demo_pipeline() -> None:
    card = _card()
    crops = np.random.default_rng(0).integers(0, 256, (1, 8, 224, 224, 3), dtype=np.uint8)
    # The demo: aligned RGB 224 crop -> ToTensor (CHW, /255) -> Normalize(CLIP mean, std).
    chw = crops.astype(np.float32).transpose(0, 1, 4, 2, 3) / np.float32(255.0)
    want = (chw - np.array(CLIP_MEAN, np.float32)[:, None, None]) / np.array(CLIP_STD, np.float32)[:, None, None]
    got = card.preprocess(crops)
    assert got.shape == (1, 8, 3, 224, 224) and got.dtype == torch.float32
    assert np.abs(got.numpy() - want).max() < 1e-5


def test_card_carries_the_deepfakebench_template_and_sampling() -> None:
    card = _card()
    t = card.template
    want = [(84.76, 105.38), (138.97, 105.08), (112.04, 136.21), (89.77, 167.95), (134.66, 167.70)]
    assert t.size == 224 and t.fit == "umeyama" and not t.per_clip
    assert np.abs(np.asarray(t.points) - np.asarray(want)).max() < 0.01
    assert t.keypoint_offsets is not None and len(t.keypoint_offsets) == 5
    assert (card.input_size, card.colour_order, card.clip_len, card.window_len, card.window_stride) == \
        (224, "RGB", 8, 8, 4)
    assert math.isclose(card.sample_fps or 0.0, 1.875)
    assert card.checkpoints[0].filename == "sta_best.pth" and "CC BY-NC 4.0" in card.checkpoints[0].licence
