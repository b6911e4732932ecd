"""StyleFlow stage 2 (``styleflow_content``) and the composite ``styleflow``.

Golden data and key lists come from the authors' ``I3D8x8`` (TrueMedia copy) via
``tools/parity/styleflow_content.py``; the pSp/StyleGRU parts are tested in
``test_styleflow_parts.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import models
from models import CheckpointError
from models.layers.styleflow_content import SAM_READINGS
from models.styleflow import (CONTENT_CARD, PSP_CARD, STYLEFLOW_CARD, IMAGENET_MEAN, IMAGENET_STD, StyleFlow,
                              StyleFlowContent)
from tests.models.seeded import fill_seeded, golden_metadata, seeded_state

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "golden_styleflow_content.safetensors"
READINGS_GOLDEN = DATA / "golden_styleflow_content_readings.safetensors"
KEYS = DATA / "keys_styleflow_content.json"

torch.set_num_threads(1)


META = golden_metadata(GOLDEN)
SMALL: dict[str, Any] = json.loads(META["overrides"])
SEED = int(META["seed"])
RENAME: dict[str, str] = json.loads(META["rename"])

# A composite whose parts chain: pSp 4 styles × 8 → flow 32; GRU hidden 32 → E 128 =
# content 2 tokens × 64 channels; crops 64² → content 48².
SMALL_PARTS: dict[str, Any] = {
    "psp": dict(units=(1, 1, 1, 1), widths=(16, 16, 32, 32), n_styles=4, style_dim=8, input_size=64),
    "stylegru": dict(steps=3, input_size=32, hidden_size=32, res_hidden=16),
    "content": dict(width=4, clip_len=4, input_size=48, tte_heads=2, tte_dim_head=8, tte_mlp_dim=32),
}


@pytest.fixture(scope="module")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(GOLDEN))


@pytest.fixture(scope="module")
def content_small() -> StyleFlowContent:
    model = models.create_model("styleflow_content", **SMALL)
    assert isinstance(model, StyleFlowContent)
    return fill_seeded(model, SEED, RENAME).eval()  # type: ignore[return-value]


@pytest.fixture(scope="module")
def composite_small() -> StyleFlow:
    model = models.create_model("styleflow", **SMALL_PARTS)
    assert isinstance(model, StyleFlow)
    return fill_seeded(model, 3).eval()  # type: ignore[return-value]


def _crops(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# ------------------------------------------------------------------------ full-size layout


def test_content_full_size_layout_matches_authors() -> None:
    model = models.create_model("styleflow_content", device="meta")
    expected = json.loads(KEYS.read_text())
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 283
    assert got == expected

    def count(part: str) -> int:
        return sum(p.numel() for k, p in model.named_parameters() if part in k)

    trunk = sum(p.numel() for k, p in model.named_parameters() if ".head." not in k)
    assert trunk == pytest.approx(6.35e6, rel=0.01)
    assert count(".STA.") == pytest.approx(4.2e6, rel=0.01)
    assert count(".time_T.") == pytest.approx(8.4e6, rel=0.01)


def test_composite_full_size_layout() -> None:
    model = models.create_model("styleflow", device="meta")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.05e9, rel=0.01)
    keys = model.state_dict()
    content = {k[len("content."):]: list(v.shape) for k, v in keys.items() if k.startswith("content.")}
    assert content == json.loads(KEYS.read_text())
    for part, name in (("psp.", "styleflow_psp_encoder"), ("stylegru.", "styleflow_stylegru")):
        own = {k[len(part):]: list(v.shape) for k, v in keys.items() if k.startswith(part)}
        path = DATA / f"keys_{name}.json"
        if path.exists():  # written by the parts' tool script
            assert own == json.loads(path.read_text())
    assert {k.split(".", 1)[0] for k in keys} == {"psp", "stylegru", "content"}


def test_cards() -> None:
    for card in (STYLEFLOW_CARD, PSP_CARD, CONTENT_CARD):
        assert card.template.points[0] == (85.82991, 85.7792)
        assert card.template.size == 256 and card.template.per_clip and card.template.box_scale == 2.0
        assert card.template.fit == "cp2tform" and card.template.keypoint_offsets is None
        assert (card.window_len, card.window_stride, card.sample_fps) == (32, 32, 30.0)
    assert STYLEFLOW_CARD.clip_len == 32 and len(STYLEFLOW_CARD.checkpoints) == 3
    assert {c.part for c in STYLEFLOW_CARD.checkpoints} == {"psp_encoder", "stylegru", "content"}
    for name in ("styleflow", "styleflow_content", "styleflow_psp_encoder", "styleflow_stylegru"):
        model: Any = models.create_model(name, device="meta")
        assert model.card.name == name
        assert callable(model.checkpoint_filter_fn)


# ------------------------------------------------------------------------ content branch


def test_content_golden(content_small: StyleFlowContent, golden: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        logits = content_small.forward_logits(golden["video"], golden["style"])
        probs = content_small(golden["video"], golden["style"])
    assert logits.shape == probs.shape == (golden["video"].shape[0],)
    # Not saturated and with spread, so the comparison means something.
    assert ((golden["probs"] > 0.05) & (golden["probs"] < 0.95)).all()
    assert (golden["logits"].max() - golden["logits"].min()) > 0.1
    torch.testing.assert_close(logits, golden["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(probs, golden["probs"], atol=1e-4, rtol=0)


def test_content_batched_equals_single(content_small: StyleFlowContent, golden: dict[str, torch.Tensor]) -> None:
    video, style = golden["video"], golden["style"]
    with torch.no_grad():
        batched = content_small.forward_logits(video, style)
        single = torch.cat([content_small.forward_logits(video[i:i + 1], style[i:i + 1])
                            for i in range(video.shape[0])])
        swapped = content_small.forward_logits(video, style.flip(0))
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    # The style path is live: another clip's embedding changes the logit.
    assert (swapped - batched).abs().min() > 1e-3


# ------------------------------------------------------------------------ the three SAM readings


def _content_with(reading: str) -> StyleFlowContent:
    model = models.create_model("styleflow_content", sam_reading=reading, **SMALL)
    assert isinstance(model, StyleFlowContent)
    return fill_seeded(model, SEED, RENAME).eval()  # type: ignore[return-value]


def test_sam_readings_match_the_authors_commented_lines(golden: dict[str, torch.Tensor]) -> None:
    # Each STA call of the commented lines, switched on in the authors' module (same weights,
    # same inputs as the default golden) -> the logits of the reading with that name.
    expected = load_file(str(READINGS_GOLDEN))
    assert set(expected) == {f"logits_{name}" for name in SAM_READINGS}
    got = {}
    for name in SAM_READINGS:
        with torch.no_grad():
            got[name] = _content_with(name).forward_logits(golden["video"], golden["style"])
        torch.testing.assert_close(got[name], expected[f"logits_{name}"], atol=1e-4, rtol=0)
    torch.testing.assert_close(got["content_style_style"], golden["logits"], atol=1e-4, rtol=0)
    # The readings are different models on the same weights.
    names = sorted(got)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert (got[a] - got[b]).abs().max() > 1e-2, (a, b)


@pytest.mark.parametrize("reading", sorted(SAM_READINGS))
def test_every_reading_loads_the_stage2_layout_strictly(reading: str, tmp_path: Path) -> None:
    full: Any = models.create_model("styleflow_content", device="meta", sam_reading=reading, checkpoint={
        "model": {k: torch.empty(s, device="meta") for k, s in json.loads(KEYS.read_text()).items()}})
    assert full.load_report.ok and full.load_report.loaded == 283
    path = tmp_path / "finetuning.pth"
    torch.save({"model": _seeded_content_state()}, path)
    small: Any = models.create_model("styleflow_content", checkpoint=path, sam_reading=reading, **SMALL)
    assert small.load_report.ok and small.cfg.sam_reading == reading
    composite: Any = models.create_model("styleflow", device="meta", content={"sam_reading": reading})
    assert composite.content.cfg.sam_reading == reading


def test_unknown_reading_is_refused() -> None:
    with pytest.raises(ValueError, match="sam_reading"):
        models.create_model("styleflow_content", device="meta", sam_reading="style_content_content")


def test_content_rejects_bad_shapes(content_small: StyleFlowContent, golden: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError, match="video"):
        content_small(golden["video"][:, :, :-2], golden["style"])
    with pytest.raises(ValueError, match="style"):
        content_small(golden["video"], golden["style"][:, :-1])


def _seeded_content_state() -> dict[str, torch.Tensor]:
    model = models.create_model("styleflow_content", device="meta", **SMALL)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return seeded_state({k: shapes[k] for k in shapes}, SEED)


@pytest.mark.parametrize("layout", ["wrapped", "wrapped_module", "bare", "bare_module"])
def test_content_truemedia_layouts_load_strictly(layout: str, tmp_path: Path, golden: dict[str, torch.Tensor]) -> None:
    state = _seeded_content_state()
    if layout.endswith("module"):
        state = {f"module.{k}": v for k, v in state.items()}
    obj: dict[str, Any] = {"model": state, "epoch": 7, "best_auc": 0.9} if layout.startswith("wrapped") else state
    path = tmp_path / "true_best_1118.pth"
    torch.save(obj, path)
    model: Any = models.create_model("styleflow_content", checkpoint=path, **SMALL)
    assert model.load_report is not None and model.load_report.ok
    reference: Any = models.create_model("styleflow_content", **SMALL)
    reference.load_state_dict(_seeded_content_state())
    with torch.no_grad():
        torch.testing.assert_close(model.forward_logits(golden["video"], golden["style"]),
                                   reference.forward_logits(golden["video"], golden["style"]), atol=0, rtol=0)


def test_content_bad_checkpoints_name_the_key(tmp_path: Path) -> None:
    state = _seeded_content_state()
    missing = dict(state)
    del missing["resnet.head.STA.lp.weight"]  # e.g. a content-only FTCN checkpoint
    torch.save({"model": missing}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.head\.STA\.lp\.weight"):
        models.create_model("styleflow_content", checkpoint=tmp_path / "missing.pth", **SMALL)
    wrong = dict(state)
    wrong["resnet.s1.pathway0_stem.conv.weight"] = torch.zeros(8, 3, 5, 7, 7)  # un-surgered I3D stem
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.s1\.pathway0_stem\.conv\.weight"):
        models.create_model("styleflow_content", checkpoint=tmp_path / "wrong.pth", **SMALL)
    extra = dict(state, **{"resnet.head.fc.weight": torch.zeros(4, 4)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match=r"resnet\.head\.fc\.weight"):
        models.create_model("styleflow_content", checkpoint=tmp_path / "extra.pth", **SMALL)


def test_content_convert_round_trip(tmp_path: Path, golden: dict[str, torch.Tensor]) -> None:
    src = tmp_path / "content.pth"
    torch.save({"model": {f"module.{k}": v for k, v in _seeded_content_state().items()}}, src)
    dst = tmp_path / "content.safetensors"
    digest = models.convert_checkpoint("styleflow_content", src, dst, **SMALL)
    assert len(digest) == 64
    a: Any = models.create_model("styleflow_content", checkpoint=src, **SMALL)
    b: Any = models.create_model("styleflow_content", checkpoint=dst, **SMALL)
    with torch.no_grad():
        torch.testing.assert_close(a.forward_logits(golden["video"], golden["style"]),
                                   b.forward_logits(golden["video"], golden["style"]), atol=0, rtol=0)


def test_content_preprocess_matches_pil() -> None:
    image_mod = pytest.importorskip("PIL.Image")
    crops = _crops((1, 2, 256, 256, 3), seed=5)
    got = CONTENT_CARD.preprocess(crops)
    assert got.shape == (1, 3, 2, 224, 224) and got.dtype == torch.float32
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    for t in range(2):
        # The authors: PNG -> PIL resize((224, 224)) (bicubic) -> ToTensor -> Normalize(ImageNet).
        pil = image_mod.fromarray(crops[0, t].numpy()).resize((224, 224), image_mod.BICUBIC)
        ref = np.asarray(pil, dtype=np.float64) / 255.0
        ref = (ref - mean) / std
        ours = got[0, :, t].permute(1, 2, 0).double().numpy()
        assert np.abs(ours - ref).max() < 1e-5  # the resize is bit-exact with Pillow


def test_psp_and_composite_preprocess() -> None:
    crops = _crops((2, 256, 256, 3), seed=6)
    x = PSP_CARD.preprocess(crops)
    ref = (crops.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5
    torch.testing.assert_close(x, ref, atol=1e-6, rtol=0)
    clips = _crops((1, 32, 256, 256, 3), seed=7)
    y = STYLEFLOW_CARD.preprocess(clips)
    assert y.shape == (1, 32, 3, 256, 256)
    torch.testing.assert_close(y, clips.permute(0, 1, 4, 2, 3).float(), atol=0, rtol=0)


# ------------------------------------------------------------------------ composite


def _as_input(crops: torch.Tensor) -> torch.Tensor:
    """What the composite card's preprocess does, at any crop size: [N,T,H,W,3] -> [N,T,3,H,W] float."""
    return crops.permute(0, 1, 4, 2, 3).float()


def test_composite_forward_equals_latent_path(composite_small: StyleFlow) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    model = composite_small
    crops = _crops((2, 4, 64, 64, 3), seed=8)
    x = _as_input(crops)
    # The content input as the authors make it: PIL bicubic resize, ToTensor, ImageNet Normalize.
    resized = np.stack([np.asarray(image_mod.fromarray(c.numpy()).resize((48, 48), image_mod.BICUBIC))
                        for c in crops.reshape(8, 64, 64, 3)])
    video = (torch.from_numpy(resized).float() / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    video = video.reshape(2, 4, 48, 48, 3).permute(0, 4, 1, 2, 3)
    with torch.no_grad():
        prob = model(x)
        latents = model.psp(x.reshape(8, 3, 64, 64) / 127.5 - 1.0).reshape(2, 4, 4, 8)
        incremental = model.forward_from_latents(latents, video)
        single = torch.cat([model(x[i:i + 1]) for i in range(2)])
    assert prob.shape == (2,) and ((prob > 0) & (prob < 1)).all()
    torch.testing.assert_close(prob, incremental, atol=1e-5, rtol=0)
    torch.testing.assert_close(prob, single, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="crops"):
        model(x[:, :3])


def test_composite_config_must_chain() -> None:
    with pytest.raises(ValueError, match="stylegru.steps"):
        models.create_model("styleflow", device="meta", content=dict(clip_len=16))


def _authors_part_files(model: StyleFlow, tmp_path: Path) -> dict[str, Path]:
    """The three parts saved in the authors' layouts."""
    psp = {k: v.clone() for k, v in model.psp.state_dict().items()}
    latent_avg = psp.pop("latent_avg")
    psp_file = {"state_dict": {**{f"encoder.{k}": v for k, v in psp.items()},
                               "decoder.style.1.weight": torch.zeros(2, 2)},
                "opts": {"encoder_type": "GradualStyleEncoder", "start_from_latent_avg": True},
                "latent_avg": latent_avg}
    gru_file = {"epoch": 12, "state_dict": {f"module.model.{k}": v for k, v in model.stylegru.state_dict().items()}}
    content_file = {"model": model.content.state_dict()}
    paths = {"psp_encoder": tmp_path / "psp_ffhq_encode.pt", "stylegru": tmp_path / "checkpoint_11",
             "content": tmp_path / "true_best_1118.pth"}
    torch.save(psp_file, paths["psp_encoder"])
    torch.save(gru_file, paths["stylegru"])
    torch.save(content_file, paths["content"])
    return paths


def test_composite_loads_parts_mapping(composite_small: StyleFlow, tmp_path: Path) -> None:
    paths = _authors_part_files(composite_small, tmp_path)
    loaded: Any = models.create_model("styleflow", checkpoint=paths, **SMALL_PARTS)
    report = loaded.load_report
    assert report is not None and report.ok
    assert report.loaded == len(composite_small.state_dict())
    crops = _crops((1, 4, 64, 64, 3), seed=9)
    x = _as_input(crops)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), composite_small(x), atol=0, rtol=0)

    # A part left out is missing; nothing is loaded in a strict load.
    with pytest.raises(CheckpointError, match=r"stylegru\.gru\.weight_ih_l0"):
        models.create_model("styleflow", checkpoint={"psp_encoder": paths["psp_encoder"],
                                                     "content": paths["content"]}, **SMALL_PARTS)
    # A bad key inside a part is reported with the part's prefix.
    bad = {"model": {k: v for k, v in composite_small.content.state_dict().items() if "STA.w_q" not in k}}
    torch.save(bad, tmp_path / "bad_content.pth")
    with pytest.raises(CheckpointError, match=r"content\.resnet\.head\.STA\.w_q\.weight"):
        models.create_model("styleflow", checkpoint={**paths, "content": tmp_path / "bad_content.pth"},
                            **SMALL_PARTS)


def test_composite_single_file_round_trip(composite_small: StyleFlow, tmp_path: Path) -> None:
    from models._loading import save_safetensors

    path = tmp_path / "styleflow.safetensors"
    save_safetensors(composite_small, path)
    loaded: Any = models.create_model("styleflow", checkpoint=path, **SMALL_PARTS)
    assert loaded.load_report is not None and loaded.load_report.ok
    x = _as_input(_crops((1, 4, 64, 64, 3), seed=10))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), composite_small(x), atol=0, rtol=0)
    state = dict(load_file(str(path)))
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"extra\.weight"):
        models.create_model("styleflow", checkpoint=state, **SMALL_PARTS)


def test_composite_converts_from_the_authors_parts(composite_small: StyleFlow, tmp_path: Path) -> None:
    from safetensors import safe_open

    paths = _authors_part_files(composite_small, tmp_path)
    dst = tmp_path / "styleflow.safetensors"
    digest = models.convert_checkpoint("styleflow", paths, dst, **SMALL_PARTS)
    assert len(digest) == 64
    with safe_open(str(dst), "pt") as fh:
        meta = fh.metadata()
    assert meta["model"] == "styleflow" and meta["source_sha256"].count("=") == 3
    loaded: Any = models.create_model("styleflow", checkpoint=dst, **SMALL_PARTS)
    x = _as_input(_crops((1, 4, 64, 64, 3), seed=11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), composite_small(x), atol=0, rtol=0)
