"""The registry contract the service and CLI rely on, the CLI, and the library's isolation."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models
from models.__main__ import count_parameters, main

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = {"caddm_efficientnet_b4", "caddm_efficientnet_b3", "caddm_resnet34", "sta_clip_vitl14", "styleflow",
            "styleflow_psp_encoder", "styleflow_stylegru", "styleflow_content", "styleflow_truemedia"}

# Full-size parameter counts measured for DETECTORS.md (torch.utils.flop_counter run, random weights).
EXPECTED_MILLIONS = {"caddm_efficientnet_b4": 289.7, "caddm_efficientnet_b3": 211.0, "caddm_resnet34": 44.0,
                     "sta_clip_vitl14": 223.8, "styleflow_psp_encoder": 267.1, "styleflow_stylegru": 763.5}


def test_registered_names_are_the_contract() -> None:
    assert CONTRACT <= set(models.list_models())
    with pytest.raises(KeyError, match="registered models"):
        models.create_model("no_such_model")


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_full_size_builds_on_meta_with_a_card(name: str) -> None:
    model = models.create_model(name, device="meta")
    assert all(p.is_meta for p in model.parameters())
    card = model.card
    assert isinstance(card, models.ModelCard) and card.name == name
    assert card.template.size > 0 and len(card.template.points) == 5
    assert card.clip_len >= 1 and card.window_len >= card.clip_len and card.window_stride >= 1
    assert card.checkpoints and all(c.filename and c.source and c.licence for c in card.checkpoints)
    assert not model.training


@pytest.mark.parametrize("name,millions", sorted(EXPECTED_MILLIONS.items()))
def test_parameter_counts_match_the_authors(name: str, millions: float) -> None:
    assert count_parameters(name) / 1e6 == pytest.approx(millions, rel=0.01)


def test_params_command_prints_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["params"]) == 0
    out = capsys.readouterr().out
    for name in CONTRACT:
        assert name in out
    assert "223." in out  # StA, in millions


def test_check_command_refuses_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "sta_best.pth"
    torch.save({"backbone.conv1.weight": torch.zeros(3)}, bad)
    assert main(["check", "sta_clip_vitl14", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "backbone.conv1.weight" in err and "missing" in err


def test_models_imports_nothing_from_the_service() -> None:
    # torch itself imports asyncio, so compare against a process that imported torch only.
    code = ("import sys, torch; before = set(sys.modules); import models; "
            "new = set(sys.modules) - before; "
            "bad = sorted(m for m in new if m.split('.')[0] in "
            "('stream_monitor', 'asyncio', 'redis', 'prometheus_client', 'aiohttp')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pattern = re.compile(r"^\s*(from|import)\s+(stream_monitor|asyncio|redis|prometheus_client|aiohttp)\b", re.M)
    offenders = [str(p) for p in (ROOT / "models").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders, offenders
