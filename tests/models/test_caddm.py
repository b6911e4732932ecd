"""CADDM (``caddm_efficientnet_b4``, ``caddm_efficientnet_b3``, ``caddm_resnet34``): layout,
batching, golden parity (incl. the padding trap), checkpoint layouts, preprocessing.

Key lists and golden tensors come from the authors' modules (megvii-research/CADDM
b3f7619, ``backbones/caddm.py`` and its vendored EfficientNet) via ``tools/parity/caddm.py``.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import torch
from safetensors import safe_open

import models
from models.caddm import CADDM, TEMPLATE, mean_face_points
from models.layers.efficientnet import SameConv2d, static_same_padding
from tests.models.seeded import fill_seeded

DATA = Path(__file__).parent / "data"
NAMES = ("caddm_efficientnet_b4", "caddm_efficientnet_b3", "caddm_resnet34")
EXPECTED_PARAMS = {"caddm_efficientnet_b4": 289.7e6, "caddm_efficientnet_b3": 211.0e6, "caddm_resnet34": 44.0e6}
SMALL: dict[str, dict[str, Any]] = {
    "caddm_efficientnet_b4": {"width_coefficient": 0.1, "depth_coefficient": 0.5},
    "caddm_efficientnet_b3": {"width_coefficient": 0.15, "depth_coefficient": 0.4},
    "caddm_resnet34": {"layers": [1, 2, 1, 1], "widths": [16, 32, 64, 128]},
}

torch.set_num_threads(1)


def _seeded(model: torch.nn.Module, seed: int, running_var_scale: float = 1.0) -> CADDM:
    """Seeded weights; BatchNorm running variances scaled as in the golden files (keeps
    the signal alive through EfficientNet's SE-gated blocks)."""
    fill_seeded(model, seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("running_var"):
                value.mul_(running_var_scale)
    return cast(CADDM, model.eval())


def _small(name: str, seed: int = 0) -> CADDM:
    return _seeded(models.create_model(name, **SMALL[name]), seed, 0.4 if "efficientnet" in name else 1.0)


def _input(n: int, size: int = 224, seed: int = 3, scale: float = 1 / 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float() * scale


def _golden(name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DATA / f"golden_{name}.safetensors"), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata())


def _golden_model_and_input(name: str) -> tuple[CADDM, torch.Tensor, dict[str, torch.Tensor]]:
    tensors, meta = _golden(name)
    model = _seeded(models.create_model(name, **json.loads(meta["overrides"])), int(meta["seed"]),
                    float(meta["running_var_scale"]))
    up = int(meta["upsample"])
    x = tensors["crops"].float().repeat_interleave(up, -2).repeat_interleave(up, -1) * float(meta["input_scale"])
    return model, x, tensors


# 1. full-size layout ---------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_full_size_keys_shapes_and_parameter_count_match_the_authors(name: str) -> None:
    expected = json.loads((DATA / f"keys_{name}.json").read_text())
    model = models.create_model(name, device="meta")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(expected)  # same keys, same order as the authors' state dict
    assert ours == expected
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(EXPECTED_PARAMS[name], rel=0.01)


def test_b4_layout_facts() -> None:
    sd = models.create_model("caddm_efficientnet_b4", device="meta").state_dict()
    assert len(sd) == 787
    assert sd["base_model._conv_stem.weight"].shape == (48, 3, 3, 3)
    assert sd["base_model._fc.weight"].shape == (1000, 1792)  # unused ImageNet head, kept
    assert sd["adm.adm_extra_layers.0.0.conv1.weight"].shape == (1792, 1792, 1, 1)
    assert sd["adm.multi_scale_detection_module.ms_cls.3.weight"].shape == (4, 1792, 1, 1)
    assert sd["fc.weight"].shape == (2, 1792)


def test_tf_same_padding_is_static_and_asymmetric() -> None:
    assert static_same_padding(3, 2, 380) == (0, 1)
    assert static_same_padding(5, 2, 380) == (1, 2)
    assert static_same_padding(5, 2, 300) == (1, 2)
    assert static_same_padding(5, 1, 380) == (2, 2)
    assert static_same_padding(1, 1, 380) == (0, 0)


# 2. small configuration: forward contract and batching ------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_small_forward_contract_and_batched_equals_single(name: str) -> None:
    model = _small(name)
    x = _input(3)
    with torch.no_grad():
        probs, logits = model(x), model.forward_logits(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert probs.shape == (3,) and probs.dtype == torch.float32 and logits.shape == (3, 2)
    assert bool(((probs >= 0) & (probs <= 1)).all())
    torch.testing.assert_close(probs, logits.softmax(-1)[:, 1])
    torch.testing.assert_close(probs, singles, atol=1e-6, rtol=0)


@pytest.mark.parametrize("size", [192, 288])
def test_input_without_a_7x7_map_is_refused(size: int) -> None:
    model = _small("caddm_efficientnet_b4")
    with pytest.raises(ValueError, match="7x7"):
        model(_input(1, size))


def test_unknown_override_is_refused() -> None:
    with pytest.raises(TypeError, match="unknown overrides"):
        models.create_model("caddm_resnet34", width_coefficient=0.5)


# 3. golden parity with the authors' modules -----------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_golden_parity(name: str) -> None:
    model, x, golden = _golden_model_and_input(name)
    with torch.no_grad():
        logits, probs = model.forward_logits(x), model(x)
    assert (logits - golden["logits"]).abs().max().item() <= 1e-4
    assert (probs - golden["probs"]).abs().max().item() <= 1e-4
    # the golden outputs must be informative: not saturated, and input-dependent
    assert bool(((golden["probs"] > 0.05) & (golden["probs"] < 0.95)).all())
    assert (golden["logits"][0] - golden["logits"][1]).abs().max().item() > 1e-2


def _symmetric_padding(model: CADDM) -> int:
    convs = [m for m in model.modules() if isinstance(m, SameConv2d)]
    for m in convs:
        p = (m.kernel_size[0] - 1) // 2
        m.pad = (p, p, p, p)
    return len(convs)


def test_golden_catches_symmetric_padding_at_224() -> None:
    model, x, golden = _golden_model_and_input("caddm_efficientnet_b4")
    assert x.shape[-1] == 224 and _symmetric_padding(model) > 0
    with torch.no_grad():
        assert (model.forward_logits(x) - golden["logits"]).abs().max().item() > 1e-2


def test_golden_at_odd_sizes_needs_the_static_padding() -> None:
    # 230 px: stride-2 inputs 115 and 57 are odd; symmetric (and TF dynamic) padding give 8x8 maps
    model, x, _ = _golden_model_and_input("caddm_efficientnet_b3")
    assert x.shape[-1] == 230 and _symmetric_padding(model) > 0
    with pytest.raises(ValueError, match="7x7"):
        model(x)


# 4. checkpoints in the authors' layouts ----------------------------------------------


def _authors_checkpoint(model: CADDM, prefix: str = "") -> dict[str, Any]:
    """What ``train.py::save_checkpoint`` writes: network, AdamW state, epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=4e-3)
    opt_state: dict[str, Any] = {"param_groups": opt.state_dict()["param_groups"], "state": OrderedDict()}
    for i, p in enumerate(list(model.parameters())[:3]):
        opt_state["state"][i] = {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
    network = OrderedDict((prefix + k, v.clone()) for k, v in model.state_dict().items())
    return {"network": network, "opt_state": opt_state, "epoch": 9}


@pytest.mark.parametrize("name", ["caddm_efficientnet_b4", "caddm_resnet34"])
@pytest.mark.parametrize("layout", ["network", "network_module", "bare", "bare_module"])
def test_authors_layouts_load_strictly(tmp_path: Path, name: str, layout: str) -> None:
    source = _small(name, seed=5)
    prefix = "module." if layout.endswith("module") else ""
    ck: dict[str, Any] = _authors_checkpoint(source, prefix)
    if layout.startswith("bare"):
        ck = dict(ck["network"])
    path = tmp_path / "ck.pkl"
    torch.save(ck, path)
    loaded = cast(CADDM, models.create_model(name, checkpoint=path, **SMALL[name]))
    assert loaded.load_report.ok  # type: ignore[union-attr]
    x = _input(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_logits(x), source.forward_logits(x), atol=0, rtol=0)


def test_conversion_to_safetensors_round_trips(tmp_path: Path) -> None:
    name = "caddm_efficientnet_b4"
    source = _small(name, seed=6)
    src = tmp_path / "efficientnet-b4.pkl"
    torch.save(_authors_checkpoint(source, "module."), src)
    dst = tmp_path / "efficientnet-b4.safetensors"
    digest = models.convert_checkpoint(name, src, dst, **SMALL[name])
    assert digest == models.sha256_file(dst)
    loaded = models.create_model(name, checkpoint=dst, **SMALL[name])
    x = _input(1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=0, rtol=0)


def test_wrong_shape_missing_and_unexpected_keys_fail_naming_the_key(tmp_path: Path) -> None:
    name = "caddm_resnet34"
    state = _small(name).state_dict()
    cases = {
        "fc.weight": {**state, "fc.weight": torch.zeros(2, 7)},
        "adm.adm_extra_layers.3.conv1.bias": {k: v for k, v in state.items()
                                              if k != "adm.adm_extra_layers.3.conv1.bias"},
        "adm.extra.weight": {**state, "adm.extra.weight": torch.zeros(1)},
    }
    for key, bad in cases.items():
        path = tmp_path / "bad.pkl"
        torch.save({"network": bad, "opt_state": {}, "epoch": 0}, path)
        with pytest.raises(models.CheckpointError, match=key.replace(".", r"\.")):
            models.create_model(name, checkpoint=path, **SMALL[name])


# 5. card and preprocessing -----------------------------------------------------------


def test_template_is_the_authors_mean_face() -> None:
    expected = [(75.75, 92.56), (147.75, 92.38), (111.63, 144.58), (81.90, 186.02), (141.85, 185.42)]
    np.testing.assert_allclose(np.asarray(mean_face_points()), expected, atol=0.01)
    assert TEMPLATE.points == mean_face_points() and TEMPLATE.size == 224
    assert TEMPLATE.fit == "umeyama" and not TEMPLATE.per_clip and TEMPLATE.keypoint_offsets is None


@pytest.mark.parametrize("name", NAMES)
def test_card_contract(name: str) -> None:
    card = models.create_model(name, device="meta").card
    assert (card.input_size, card.colour_order, card.value_range, card.mean, card.std) == \
        (224, "BGR", (0.0, 255.0), None, None)
    assert (card.clip_len, card.window_len, card.window_stride, card.sample_fps) == (1, 8, 4, 8.0)
    assert card.per_frame and "one frame per video" in card.sampling
    (spec,) = card.checkpoints
    assert spec.filename == {"caddm_efficientnet_b4": "efficientnet-b4.pkl", "caddm_efficientnet_b3":
                             "efficientnet-b3.pkl", "caddm_resnet34": "resnet34.pkl"}[name]
    assert "1JNMI4RGssgCOl9t05jkUa6imnw5XR5id" in spec.source and "Apache-2.0" in spec.licence


def test_preprocess_matches_the_authors_test_pipeline() -> None:
    # dataset.py (test): cv2.imread -> BGR uint8 crop -> torch.Tensor(img.transpose(2, 0, 1)), no scaling
    rgb = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    bgr = rgb[..., ::-1]
    expected = np.stack([b.transpose(2, 0, 1) for b in bgr]).astype(np.float32)
    card = models.create_model("caddm_efficientnet_b4", device="meta").card
    out = card.preprocess(rgb)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 224, 224)
    np.testing.assert_array_equal(out.numpy(), expected)
