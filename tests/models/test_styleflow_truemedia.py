"""``styleflow_truemedia``: StyleFlow as TrueMedia deployed it (content branch only).

Key list and golden data come from TrueMedia's own ``model/ftcn.py`` (the module their
``custommodel.py`` runs) via ``tools/parity/styleflow_truemedia.py``; the full-size parity
run (their ``_predict`` on PNG crops vs ours) is recorded in FIDELITY.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import models
from models import CheckpointError
from models.styleflow import STYLEFLOW_CARD
from models.styleflow_truemedia import TRUEMEDIA_CARD, TRUEMEDIA_THRESHOLD, StyleFlowTrueMedia
from tests.models.seeded import fill_seeded, golden_metadata, seeded_state, seeded_tensor

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_styleflow_truemedia.safetensors"
KEYS = DATA / "keys_styleflow_truemedia.json"
STYLE_KEYS = DATA / "keys_styleflow_content.json"  # the "for Styleflow" module's layout (with STA)
STA = "resnet.head.STA."

torch.set_num_threads(1)


META = golden_metadata(GOLDEN)
SMALL: dict[str, Any] = json.loads(META["overrides"])
SEED = int(META["seed"])
RENAME: dict[str, str] = json.loads(META["rename"])
CLIPS = int(META["clips"])
OFFSETS: list[float] = json.loads(META["clip_offsets"])


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


@pytest.fixture(scope="module")
def video(golden: dict[str, torch.Tensor]) -> torch.Tensor:
    """The golden inputs, regenerated as the parity tool made them (see its metadata)."""
    t, s = SMALL["clip_len"], SMALL["input_size"]
    x = seeded_tensor("input.video", (CLIPS, 3, t, s, s), SEED + 1) * math.sqrt(3 * t * s * s)
    x = x + torch.tensor(OFFSETS).view(-1, 1, 1, 1, 1)
    # The stored probe catches a change in the seeded generator before any model runs.
    torch.testing.assert_close(x.reshape(-1)[:golden["video_probe"].numel()], golden["video_probe"], atol=0, rtol=0)
    torch.testing.assert_close(x.sum().reshape(1), golden["video_sum"], atol=1e-2, rtol=1e-6)
    return x


@pytest.fixture(scope="module")
def small() -> StyleFlowTrueMedia:
    model = models.create_model("styleflow_truemedia", **SMALL)
    assert isinstance(model, StyleFlowTrueMedia)
    return fill_seeded(model, SEED, RENAME).eval()  # type: ignore[return-value]


def _meta_state(path: Path) -> dict[str, torch.Tensor]:
    """A full-size state dict with the key layout of ``path``, on the meta device."""
    return {k: torch.empty(shape, device="meta") for k, shape in json.loads(path.read_text()).items()}


# ------------------------------------------------------------------------ full-size layout


def test_full_size_layout_is_truemedias_module() -> None:
    model = models.create_model("styleflow_truemedia", device="meta")
    expected = json.loads(KEYS.read_text())
    assert len(expected) == 275
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == 14_765_889  # their I3D8x8 (tool output)
    # The deployed module is the "for Styleflow" one minus its 8 style-attention tensors.
    with_sta = json.loads(STYLE_KEYS.read_text())
    assert {k: v for k, v in with_sta.items() if not k.startswith(STA)} == expected
    assert sum(k.startswith(STA) for k in with_sta) == 8


@pytest.mark.parametrize("layout", ["wrapped", "bare", "wrapped_module"])
def test_full_size_true_best_layout_loads_strictly(layout: str) -> None:
    state = _meta_state(KEYS)
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    ckpt: dict[str, Any] = {"model": state, "epoch": 30, "optimizer": {"lr": 1e-4}} if layout.startswith("wrapped") \
        else state
    model: Any = models.create_model("styleflow_truemedia", checkpoint=ckpt, device="meta")
    report = model.load_report
    assert report.ok and report.loaded == 275 and report.ignored == []


def test_full_size_file_with_style_attention_loads_with_sta_ignored() -> None:
    # A stage-2 file written by the "for Styleflow" module: their server's strict=False load
    # drops the 8 STA tensors; ours loads the rest strictly and lists what it ignored.
    model: Any = models.create_model("styleflow_truemedia", checkpoint={"model": _meta_state(STYLE_KEYS)},
                                     device="meta")
    report = model.load_report
    assert report.ok and report.loaded == 275
    assert report.ignored == sorted(k for k in json.loads(STYLE_KEYS.read_text()) if k.startswith(STA))
    assert "8 ignored keys" in str(report)


@pytest.mark.parametrize("change,needle", [
    ("drop", r"resnet\.head\.time_T\.mlp_head\.1\.weight"),
    ("extra", r"resnet\.s5\.pathway0_res0\.branch1\.weight"),
    ("shape", r"resnet\.s1\.pathway0_stem\.conv\.weight"),
])
def test_full_size_bad_layouts_name_the_key(change: str, needle: str) -> None:
    state = _meta_state(STYLE_KEYS)  # the ignored STA tensors must not hide a real problem
    if change == "drop":
        del state["resnet.head.time_T.mlp_head.1.weight"]
    elif change == "extra":
        state["resnet.s5.pathway0_res0.branch1.weight"] = torch.empty(2048, 1024, 1, 1, 1, device="meta")
    else:
        state["resnet.s1.pathway0_stem.conv.weight"] = torch.empty(64, 3, 5, 7, 7, device="meta")  # un-surgered
    with pytest.raises(CheckpointError, match=needle):
        models.create_model("styleflow_truemedia", checkpoint={"model": state}, device="meta")


def test_style_enabled_model_refuses_the_content_only_layout() -> None:
    with pytest.raises(CheckpointError, match=r"resnet\.head\.STA\.w_q\.weight"):
        models.create_model("styleflow_content", checkpoint={"model": _meta_state(KEYS)}, device="meta")


# ------------------------------------------------------------------------ golden


def test_golden_matches_truemedias_module(small: StyleFlowTrueMedia, video: torch.Tensor,
                                          golden: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        batched = small.forward_logits(video)
        single = torch.cat([small.forward_logits(video[i:i + 1]) for i in range(CLIPS)])  # as _predict runs
        probs = small(video)
    assert batched.shape == probs.shape == (CLIPS,)
    # The clips' logits spread, so the comparison and the score definition mean something.
    assert golden["logits"].max() - golden["logits"].min() > 0.5
    torch.testing.assert_close(single, golden["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched, golden["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, torch.sigmoid(golden["logits"]), atol=1e-4, rtol=0)


def test_video_score_is_sigmoid_of_mean_logit(small: StyleFlowTrueMedia, video: torch.Tensor,
                                              golden: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        score = small.video_score(small.forward_logits(video))
    torch.testing.assert_close(score.reshape(1), golden["video_score"], atol=1e-4, rtol=0)
    # Not the mean of the clip probabilities (the difference is well above the tolerance here).
    mean_prob = torch.sigmoid(golden["logits"]).mean()
    assert abs(mean_prob.item() - golden["video_score"].item()) > 3e-3
    with pytest.raises(ValueError, match="at least one clip"):
        small.video_score(torch.zeros(0))


def test_rejects_bad_shapes(small: StyleFlowTrueMedia, video: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="video"):
        small(video[:, :, :-2])
    with pytest.raises(ValueError, match="video"):
        small(video[0])


# ------------------------------------------------------------------------ files


def _small_state(with_sta: bool) -> dict[str, torch.Tensor]:
    shapes = {k: tuple(v.shape) for k, v in models.create_model("styleflow_truemedia", device="meta", **SMALL)
              .state_dict().items()}
    if with_sta:
        channels = 16 * SMALL["width"]
        for name in ("w_q", "w_k", "w_v", "lp"):
            shapes[f"{STA}{name}.weight"], shapes[f"{STA}{name}.bias"] = (channels, channels), (channels,)
    return seeded_state(shapes, SEED)


@pytest.mark.parametrize("layout", ["wrapped", "wrapped_module", "bare", "with_sta"])
def test_truemedia_files_load_strictly(layout: str, tmp_path: Path, video: torch.Tensor) -> None:
    state = _small_state(with_sta=layout == "with_sta")
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    obj: dict[str, Any] = state if layout == "bare" else {"model": state, "epoch": 3}
    path = tmp_path / "true_best_1118.pth"
    torch.save(obj, path)
    model: Any = models.create_model("styleflow_truemedia", checkpoint=path, **SMALL)
    assert model.load_report.ok and len(model.load_report.ignored) == (8 if layout == "with_sta" else 0)
    reference: Any = models.create_model("styleflow_truemedia", **SMALL)
    reference.load_state_dict(_small_state(with_sta=False))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(video), reference.forward_logits(video), atol=0, rtol=0)


def test_convert_round_trip(tmp_path: Path, video: torch.Tensor) -> None:
    src = tmp_path / "true_best_1118.pth"
    torch.save({"model": _small_state(with_sta=True)}, src)
    dst = tmp_path / "styleflow_truemedia.safetensors"
    assert len(models.convert_checkpoint("styleflow_truemedia", src, dst, **SMALL)) == 64
    a: Any = models.create_model("styleflow_truemedia", checkpoint=src, **SMALL)
    b: Any = models.create_model("styleflow_truemedia", checkpoint=dst, **SMALL)
    assert b.load_report.ok and b.load_report.ignored == []  # the converted file has no STA tensors
    with torch.no_grad():
        torch.testing.assert_close(a.forward_logits(video), b.forward_logits(video), atol=0, rtol=0)


# ------------------------------------------------------------------------ card


def test_card() -> None:
    card = TRUEMEDIA_CARD
    assert card.name == "styleflow_truemedia" and card.family == "styleflow"
    assert card.template == STYLEFLOW_CARD.template  # FTCN's per-clip 256 alignment
    assert (card.clip_len, card.window_len, card.window_stride, card.input_size) == (32, 32, 32, 224)
    [spec] = card.checkpoints
    assert (spec.filename, spec.part) == ("true_best_1118.pth", "model")
    assert "sigmoid(mean clip logit)" in card.notes and "0.2" in card.notes and TRUEMEDIA_THRESHOLD == 0.2
    crops = torch.randint(0, 256, (1, 32, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert card.preprocess(crops).shape == (1, 3, 32, 224, 224)
    model: Any = models.create_model("styleflow_truemedia", device="meta")
    assert model.card is card and callable(model.checkpoint_filter_fn)
