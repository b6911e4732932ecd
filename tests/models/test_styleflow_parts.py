"""StyleFlow's parts: the pSp encoder and StyleGRU (models/layers/{psp_encoder,stylegru}.py).

Layouts are checked at full size on ``meta`` against the authors' key lists, numerics at
small size against goldens made from the authors' modules by
``tools/parity/styleflow_parts.py`` (same seeded weights), and checkpoint loading in each
of the authors' file layouts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from models._loading import CheckpointError, load_checkpoint, save_safetensors
from models.layers.psp_encoder import PSPEncoder, PSPEncoderConfig
from models.layers.stylegru import StyleGRU, StyleGRUConfig, style_flow
from tests.models.seeded import fill_seeded, golden_metadata

DATA = Path(__file__).parent / "data"
PSP_GOLDEN = DATA / "golden_styleflow_psp_encoder.safetensors"
GRU_GOLDEN = DATA / "golden_styleflow_stylegru.safetensors"
TOL = 1e-4


def _overrides(path: Path) -> dict[str, Any]:
    raw = json.loads(golden_metadata(path)["overrides"])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}


def _seed_psp(model: nn.Module, seed: int) -> nn.Module:
    # Same rule as the tool: BatchNorm weights seeded like norms (pSp's keys lack the hint).
    rename = {f"{name}.weight": f"{name}.bn.weight" for name, m in model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    return fill_seeded(model, seed, rename=rename)


def _psp_input(crops: torch.Tensor) -> torch.Tensor:
    return (crops.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


@pytest.fixture(scope="module")
def psp_small() -> tuple[PSPEncoder, dict[str, torch.Tensor]]:
    golden = load_file(str(PSP_GOLDEN))
    seed = int(golden_metadata(PSP_GOLDEN)["seed"])
    model = PSPEncoder(PSPEncoderConfig(**_overrides(PSP_GOLDEN)))
    return _seed_psp(model, seed).eval(), golden  # type: ignore[return-value]


@pytest.fixture(scope="module")
def gru_small() -> tuple[StyleGRU, dict[str, torch.Tensor]]:
    golden = load_file(str(GRU_GOLDEN))
    seed = int(golden_metadata(GRU_GOLDEN)["seed"])
    model = StyleGRU(StyleGRUConfig(**_overrides(GRU_GOLDEN)))
    return fill_seeded(model, seed).eval(), golden  # type: ignore[return-value]


# ---------------------------------------------------------------- full-size layout on meta

@pytest.mark.parametrize("name, build, params", [
    ("styleflow_psp_encoder", lambda: PSPEncoder(PSPEncoderConfig()), 267.1e6),
    ("styleflow_stylegru", lambda: StyleGRU(StyleGRUConfig()), 763.5e6),
])
def test_full_size_layout_matches_authors(name: str, build: Any, params: float) -> None:
    with torch.device("meta"):
        model = build()
    want = json.loads((DATA / f"keys_{name}.json").read_text())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(got) == list(want)
    assert got == want
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - params) / params < 0.01, count


def test_full_size_dimensions() -> None:
    with torch.device("meta"):
        gru = StyleGRU(StyleGRUConfig())
        psp = PSPEncoder(PSPEncoderConfig())
    assert gru.cfg.embed_dim == 16384 and tuple(gru.hidden_state.shape) == (4, 1, 4096)
    assert psp.cfg.taps == (6, 20, 23)
    assert [len(h.convs) // 2 for h in psp.styles] == [4] * 3 + [5] * 4 + [6] * 11
    assert tuple(psp.latent_avg.shape) == (18, 512)


# ---------------------------------------------------------------- goldens from the authors' modules

def test_psp_golden(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]]) -> None:
    model, golden = psp_small
    want = golden["codes"]
    # The codes must depend on the input, or the comparison proves nothing.
    assert (want[0] - want[1]).abs().max() > 100 * TOL
    with torch.no_grad():
        got = model(_psp_input(golden["crops"]))
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL


def test_stylegru_golden(gru_small: tuple[StyleGRU, dict[str, torch.Tensor]]) -> None:
    model, golden = gru_small
    flow = style_flow(golden["latents"])
    assert torch.equal(flow, golden["flow"])  # the authors' get_diff on style-major rows
    probs, logits = golden["probs"], golden["logits"]
    assert ((probs > 0.05) & (probs < 0.95)).all()
    assert logits.max() - logits.min() > 0.1
    with torch.no_grad():
        assert (model.embed(flow) - golden["embed"]).abs().max().item() <= TOL
        assert (model.forward_logits(flow) - logits).abs().max().item() <= TOL
        got = model(flow)
    assert got.shape == (flow.shape[0],) and got.dtype == torch.float32
    assert (got - probs).abs().max().item() <= TOL


def test_batched_equals_single(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                               gru_small: tuple[StyleGRU, dict[str, torch.Tensor]]) -> None:
    psp, pg = psp_small
    gru, gg = gru_small
    x = _psp_input(pg["crops"])
    flow = gg["flow"]
    with torch.no_grad():
        batched = psp(x)
        single = torch.cat([psp(x[i:i + 1]) for i in range(x.shape[0])])
        assert (batched - single).abs().max().item() <= 1e-5
        batched = gru.forward_logits(flow)
        single = torch.cat([gru.forward_logits(flow[i:i + 1]) for i in range(flow.shape[0])])
        assert (batched - single).abs().max().item() <= 1e-5


def test_style_flow_layout() -> None:
    latents = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) ** 2
    flow = style_flow(latents)
    assert flow.shape == (2, 2, 20)
    # Row s of frame t sits at columns 5s…5s+4 (style-major), difference of t+1 and t.
    assert torch.equal(flow[1, 0, 5:10], latents[1, 1, 1] - latents[1, 0, 1])
    with pytest.raises(ValueError):
        style_flow(latents[:, :1])


def test_bad_input_shapes(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                          gru_small: tuple[StyleGRU, dict[str, torch.Tensor]]) -> None:
    with pytest.raises(ValueError, match="expected"):
        psp_small[0](torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="style flow"):
        gru_small[0](torch.zeros(1, 30, gru_small[0].cfg.input_size))


# ---------------------------------------------------------------- pSp checkpoint layouts

def _psp_file(model: PSPEncoder, *, latent_avg: bool = True, start_from_latent_avg: bool = True,
              encoder_type: str = "GradualStyleEncoder") -> dict[str, Any]:
    """pSp's training checkpoint (training/coach.py ``__get_save_dict``): whole-net state dict."""
    state: dict[str, Any] = {f"encoder.{k}": v.clone() for k, v in model.state_dict().items() if k != "latent_avg"}
    state["decoder.style.1.weight"] = torch.randn(512, 512)  # StyleGAN2 generator: dropped
    state["decoder.noises.noise_0"] = torch.randn(1, 1, 4, 4)
    ckpt: dict[str, Any] = {"state_dict": state, "opts": {
        "encoder_type": encoder_type, "start_from_latent_avg": start_from_latent_avg, "input_nc": 3,
        "output_size": 1024, "dataset_type": "ffhq_encode", "learn_in_w": False, "lpips_lambda": 0.8}}
    if latent_avg:
        ckpt["latent_avg"] = model.latent_avg.clone()
    return ckpt


def _fresh_psp(model: PSPEncoder) -> PSPEncoder:
    return PSPEncoder(model.cfg).eval()


def test_psp_authors_checkpoint_loads(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                                      tmp_path: Path) -> None:
    model, golden = psp_small
    path = tmp_path / "psp_ffhq_encode.pt"
    torch.save(_psp_file(model), path)
    fresh = _fresh_psp(model)
    report = load_checkpoint(fresh, path)
    assert report.ok and report.loaded == len(model.state_dict())
    x = _psp_input(golden["crops"])
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_psp_bare_encoder_and_no_latent_avg(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                                            tmp_path: Path) -> None:
    model, golden = psp_small
    x = _psp_input(golden["crops"])
    with torch.no_grad():
        raw_codes = model(x) - model.latent_avg
    bare = {k: v for k, v in model.state_dict().items() if k != "latent_avg"}
    torch.save(bare, tmp_path / "encoder.pt")
    torch.save(_psp_file(model, latent_avg=False, start_from_latent_avg=False), tmp_path / "psp_no_avg.pt")
    for name in ("encoder.pt", "psp_no_avg.pt"):
        fresh = _fresh_psp(model)
        load_checkpoint(fresh, tmp_path / name)
        assert torch.equal(fresh.latent_avg, torch.zeros_like(model.latent_avg))
        with torch.no_grad():
            assert (fresh(x) - raw_codes).abs().max().item() <= 1e-6


def test_psp_latent_avg_vector_broadcasts(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]]) -> None:
    model, _ = psp_small
    ckpt = _psp_file(model)
    ckpt["latent_avg"] = torch.arange(model.cfg.style_dim, dtype=torch.float32)
    fresh = _fresh_psp(model)
    load_checkpoint(fresh, ckpt)
    assert torch.equal(fresh.latent_avg[-1], ckpt["latent_avg"])


def test_psp_canonical_safetensors_round_trip(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                                              tmp_path: Path) -> None:
    model, _ = psp_small
    path = tmp_path / "psp.safetensors"
    save_safetensors(model, path)
    assert set(load_file(str(path))) == set(model.state_dict())
    fresh = _fresh_psp(model)
    load_checkpoint(fresh, path)
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


@pytest.mark.parametrize("edit, key", [
    ("missing", "body.3.res_layer.1.weight"),
    ("shape", "styles.0.linear.weight"),
    ("unexpected", "stray.weight"),
    ("missing_avg", "latent_avg"),
])
def test_psp_bad_checkpoints_name_the_key(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]],
                                          edit: str, key: str) -> None:
    model, _ = psp_small
    ckpt = _psp_file(model, latent_avg=edit != "missing_avg")
    state = ckpt["state_dict"]
    if edit == "missing":
        del state[f"encoder.{key}"]
    elif edit == "shape":
        state[f"encoder.{key}"] = torch.zeros(3, 3)
    elif edit == "unexpected":
        state[f"encoder.{key}"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint(_fresh_psp(model), ckpt)


def test_psp_other_encoder_type_refused(psp_small: tuple[PSPEncoder, dict[str, torch.Tensor]]) -> None:
    model, _ = psp_small
    with pytest.raises(CheckpointError, match="GradualStyleEncoder"):
        load_checkpoint(_fresh_psp(model), _psp_file(model, encoder_type="BackboneEncoderUsingLastLayerIntoW"))


# ---------------------------------------------------------------- StyleGRU checkpoint layouts

@pytest.mark.parametrize("layout", ["stage1", "bare", "safetensors"])
def test_stylegru_checkpoint_layouts(gru_small: tuple[StyleGRU, dict[str, torch.Tensor]],
                                     tmp_path: Path, layout: str) -> None:
    model, golden = gru_small
    if layout == "stage1":  # StyleGRU/train.py: DataParallel(TripletNet(StyleGRU)).state_dict()
        path = tmp_path / "checkpoint_7"
        torch.save({"epoch": 8, "state_dict": {f"module.model.{k}": v.clone()
                                               for k, v in model.state_dict().items()}}, path)
    elif layout == "bare":  # --ckp / TrueMedia style_best.pth: g.state_dict()
        path = tmp_path / "style_best.pth"
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, path)
    else:
        path = tmp_path / "stylegru.safetensors"
        save_safetensors(model, path)
    fresh = StyleGRU(model.cfg).eval()
    report = load_checkpoint(fresh, path)
    assert report.ok and report.loaded == len(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh.forward_logits(golden["flow"]), model.forward_logits(golden["flow"]))


@pytest.mark.parametrize("edit, key", [
    ("missing", "hidden_state"),
    ("shape", "gru.weight_ih_l0"),
    ("unexpected", "stray"),
])
def test_stylegru_bad_checkpoints_name_the_key(gru_small: tuple[StyleGRU, dict[str, torch.Tensor]],
                                               edit: str, key: str) -> None:
    model, _ = gru_small
    state = {f"module.model.{k}": v for k, v in model.state_dict().items()}
    if edit == "missing":
        del state[f"module.model.{key}"]
    elif edit == "shape":
        state[f"module.model.{key}"] = torch.zeros(2, 2)
    else:
        state[f"module.model.{key}"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        load_checkpoint(StyleGRU(model.cfg), {"epoch": 2, "state_dict": state})
