"""``stream-monitor finetune``: the small real CADDM and StA trained on ``synth`` output, on the CPU.

The dataset is ``synth``'s: two generated real face videos and their pseudo-fakes (8 videos,
two identities, one held out). Crops come from the live path; the models are the real
ones in their small test configuration. Checked: CADDM's loss falls when it fits its crops,
its output loads strictly into ``create_model``'s small CADDM and is what ``config.yaml``
points ``eval`` at, a run stopped half-way and resumed takes exactly the losses of an
uninterrupted one (step, optimizer and scheduler restored), StA trains its adapters and
head only, and the CLI's expected failures are one ``error:`` line with exit code 2.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import models
from models._loading import LoadReport
from stream_monitor.config import Config, load_config
from stream_monitor.evaluation.datasets import Dataset, DatasetError, load_dataset
from stream_monitor.training import caddm as caddm_recipe
from stream_monitor.training import sta as sta_recipe
from stream_monitor.training.data import split_by_identity
from stream_monitor.training.loop import FinetuneError, FinetuneOptions, finetune
from stream_monitor.weights import resolve
from tests.support.face_videos import eval_config, synth_dataset
from tests.support.small import SMALL_DETECTORS

ROOT = Path(__file__).resolve().parents[2]
STEPS = 8
CADDM_SMALL = SMALL_DETECTORS["caddm"]


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stream_monitor", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def _caddm_config() -> Config:
    """The small CADDM at 4 fps: 6 crops per 1.5 s video (less face detection, same code)."""
    cfg = eval_config(["caddm"])
    cfg["detectors"]["caddm"]["sample_fps"] = 4.0
    return load_config(None, cfg)


def _opts(out: Path, **kw: Any) -> FinetuneOptions:
    base: dict[str, Any] = {"detector": "caddm", "steps": STEPS, "batch_size": 4, "lr": 2e-3, "val_fraction": 0.5,
                            "val_every": STEPS, "checkpoint_every": STEPS, "augment": False, "progress": False}
    return FinetuneOptions(out=out, **{**base, **kw})


def _reuse_crops(src: Path, dst: Path) -> None:
    """Start ``dst`` with ``src``'s extracted crops and face cache (keyed by content)."""
    dst.mkdir(parents=True)
    shutil.copytree(src / "crops", dst / "crops")
    shutil.copy(src / "cache.sqlite", dst / "cache.sqlite")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_dataset(tmp_path_factory.mktemp("finetune"), seconds=1.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, dataset: Path) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted CADDM run: STEPS steps, no augmentation (it fits the crops it sees)."""
    out = tmp_path_factory.mktemp("caddm")
    doc = finetune(_caddm_config(), load_dataset(dataset), _opts(out))
    return out, doc


def test_split_holds_out_whole_identities(dataset: Path) -> None:
    data = load_dataset(dataset)
    train, val = split_by_identity(data, 0.5, seed=0)
    # synth names a fake after its real video (real_k.mp4, real_k_<donor>.mp4): one identity each side
    train_ids = {Path(s.video).stem[:6] for s in train}
    val_ids = {Path(s.video).stem[:6] for s in val}
    assert len(train) == len(val) == 4 and len(train_ids) == len(val_ids) == 1 and train_ids != val_ids
    assert {s.label for s in train} == {s.label for s in val} == {0, 1}
    one = Dataset("ffpp", data.root, tuple(s for s in data.samples if Path(s.video).name.startswith("real_0")))
    with pytest.raises(DatasetError, match="at least two identities"):
        split_by_identity(one, 0.5, seed=0)
    assert len(split_by_identity(one, 0.0, seed=0)[0]) == 4


def test_caddm_loss_falls_and_the_output_loads_strictly(trained: tuple[Path, dict[str, Any]]) -> None:
    out, doc = trained
    loss = doc["loss"]
    assert len(loss) == STEPS and all(np.isfinite(loss))
    assert np.mean(loss[-3:]) < np.mean(loss[:3]), loss
    assert doc["train"] and all(v["crops"] > 0 for v in doc["train"])
    assert doc["final_val"]["n"] == 4 and 0.0 <= doc["final_val"]["auc"] <= 1.0  # a number, not asserted higher
    weights = out / "caddm_resnet34.safetensors"
    model = models.create_model("caddm_resnet34", checkpoint=str(weights), **CADDM_SMALL["overrides"])
    report = model.load_report
    assert isinstance(report, LoadReport) and not report.missing and not report.unexpected and not report.mismatched
    fresh = models.create_model("caddm_resnet34", **CADDM_SMALL["overrides"])
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
    # config.yaml: what eval loads, the checkpoint resolved to this file, the same small model
    cfg = load_config(out / "config.yaml")
    assert cfg.detectors.enabled == ["caddm"] and not cfg.detectors.random_weights
    checkpoint = resolve("caddm", cfg.detectors).checkpoint
    assert isinstance(checkpoint, str) and Path(checkpoint) == weights.resolve()
    assert cfg.detectors.caddm.overrides == CADDM_SMALL["overrides"]
    assert json.loads((out / "finetune.json").read_text())["steps"] == STEPS
    held_out = load_dataset(out / "val.csv")  # what `eval OUT/val.csv --config OUT/config.yaml` scores
    assert sorted(s.video.rsplit("/", 1)[-1] for s in held_out.samples) == \
        sorted(v["video"].rsplit("/", 1)[-1] for v in doc["val"])


def test_stopped_run_resumes_to_the_same_losses(tmp_path: Path, dataset: Path,
                                                trained: tuple[Path, dict[str, Any]]) -> None:
    src, uninterrupted = trained
    out = tmp_path / "resumed"
    _reuse_crops(src, out)
    cfg = _caddm_config()
    data = load_dataset(dataset)
    first = finetune(cfg, data, _opts(out, stop_at=STEPS // 2))
    assert first["stopped"] and first["steps"] == STEPS // 2
    assert not (out / "caddm_resnet34.safetensors").exists()
    state = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == STEPS // 2
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {STEPS // 2}  # AdamW's moments saved
    assert state["scheduler"]["last_epoch"] == STEPS // 2
    other = eval_config(["caddm"])
    other["detectors"]["caddm"] = {"model": "caddm_efficientnet_b3"}
    with pytest.raises(FinetuneError, match="trained with model"):
        finetune(load_config(None, other), data, _opts(out, resume=True))
    second = finetune(cfg, data, _opts(out, resume=True))
    assert second["steps"] == STEPS
    assert second["loss"] == pytest.approx(uninterrupted["loss"], rel=1e-5, abs=1e-6)
    resumed = models.create_model("caddm_resnet34", checkpoint=str(out / "caddm_resnet34.safetensors"),
                                  **CADDM_SMALL["overrides"]).state_dict()
    straight = models.create_model("caddm_resnet34", checkpoint=str(src / "caddm_resnet34.safetensors"),
                                   **CADDM_SMALL["overrides"]).state_dict()
    for key, value in straight.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_sta_trains_adapters_and_head_only(tmp_path: Path, dataset: Path) -> None:
    out = tmp_path / "sta"
    cfg = load_config(None, eval_config(["sta"]))
    data = load_dataset(dataset)
    pair = Dataset(data.layout, data.root, tuple(s for s in data.samples if Path(s.video).stem == "real_0"))
    assert sorted(s.label for s in pair.samples) == [0, 1, 1]  # the real, its video- and self-blended fakes
    doc = finetune(cfg, pair, _opts(out, detector="sta", steps=2, batch_size=2, val_fraction=0.0, lr=1e-2,
                                    augment=True))
    assert doc["val"] == [] and doc["final_val"] is None and len(doc["loss"]) == 2
    overrides = SMALL_DETECTORS["sta"]["overrides"]
    torch.manual_seed(0)  # the run's start: a fresh model under its seed
    before = models.create_model("sta_clip_vitl14", **overrides).state_dict()
    after = models.create_model("sta_clip_vitl14", checkpoint=str(out / "sta_clip_vitl14.safetensors"),
                                **overrides).state_dict()
    frozen = [k for k in before if not sta_recipe.is_trainable(k)]
    trainable = [k for k in before if sta_recipe.is_trainable(k) and before[k].is_floating_point()]
    assert frozen and trainable and any(k.startswith("backbone.transformer") for k in frozen)
    for key in frozen:
        assert torch.equal(before[key], after[key]), f"{key} changed but is frozen"
    assert any(not torch.equal(before[k], after[k]) for k in trainable if k.startswith("head."))
    assert any(not torch.equal(before[k], after[k]) for k in trainable if ".Adapter." in k and "weight" in k)


def test_caddm_anchor_targets_follow_the_authors() -> None:
    priors = caddm_recipe.anchors()
    assert priors.shape == (168, 4) and priors.min() >= 0 and priors.max() <= 1
    loc, conf = caddm_recipe.anchor_targets(None, priors)
    assert not conf.any() and not loc.any()  # a real crop: every anchor is background
    loc, conf = caddm_recipe.anchor_targets(torch.tensor([0.0, 0.0, 1.0, 1.0]), priors)
    assert conf.nonzero().flatten().tolist() == [166, 167]  # only the 1x1 map's whole-crop anchors match
    assert torch.allclose(loc[166:], torch.zeros(2, 4), atol=1e-6)
    # no positive in the batch: the detection terms vanish, only the classifier learns (as the authors')
    lo, co = caddm_recipe.multibox_loss(torch.randn(2, 168, 4), torch.randn(2, 168, 2), torch.zeros(2, 168, 4),
                                        torch.zeros(2, 168, dtype=torch.long))
    assert float(lo) == 0.0 and float(co) == 0.0


def test_cli_refuses_bad_input_with_one_line(tmp_path: Path) -> None:
    assert "no such file" in _error_line(_cli("finetune", str(tmp_path / "missing"), "--out", str(tmp_path / "o")))
    line = _error_line(_cli("finetune", str(tmp_path), "--detector", "styleflow", "--out", str(tmp_path / "o")))
    assert "caddm or sta" in line
    empty = tmp_path / "empty.csv"
    empty.write_text("path,label\n", encoding="utf-8")
    assert "empty" in _error_line(_cli("finetune", str(empty), "--out", str(tmp_path / "o"))).lower()
