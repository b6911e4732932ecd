"""Safe, strict checkpoint loading: the shared mechanism every family uses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import pytest
import torch
from torch import nn

from models._loading import (CheckpointError, load_checkpoint, load_state, read_checkpoint,
                             save_safetensors, sha256_file, strip_prefix, verify_sha256)


class _Tiny(nn.Module):
    """Stand-in with the shape of a family model: a filter that unwraps {'network': ...}."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    @staticmethod
    def checkpoint_filter_fn(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, torch.Tensor]:
        state = checkpoint.get("network", checkpoint)
        return {k: v for k, v in strip_prefix(state, "module.").items() if isinstance(v, torch.Tensor)}


class _Payload:
    """Pickles to a call that would create a file if it were ever executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in _Tiny().state_dict().items()}


def test_wrapped_and_prefixed_checkpoint_loads_strictly(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "ck.pkl"
    torch.save({"network": {f"module.{k}": v for k, v in state.items()}, "epoch": 3,
                "opt_state": {"lr": 1e-3}}, path)
    model = _Tiny()
    report = load_checkpoint(model, path)
    assert report.ok and report.loaded == len(state)
    assert torch.equal(model.conv.weight, state["conv.weight"])


def test_missing_and_mismatched_keys_fail_with_a_report(tmp_path: Path) -> None:
    state = _state()
    del state["bn.running_var"]
    state["conv.weight"] = torch.zeros(4, 3, 5, 5)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    model = _Tiny()
    before = model.conv.bias.clone()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, path)
    msg = str(err.value)
    assert "bn.running_var" in msg and "conv.weight" in msg and "extra.weight" in msg
    assert "(4, 3, 3, 3)" in msg and "(4, 3, 5, 5)" in msg
    assert torch.equal(model.conv.bias, before), "a failed strict load must leave the model untouched"
    report = load_checkpoint(model, path, strict=False)
    assert report.missing == ["bn.running_var"] and report.unexpected == ["extra.weight"]
    assert [k for k, _, _ in report.mismatched] == ["conv.weight"]


def test_code_payload_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _state(), "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert not marker.exists(), "the payload ran"
    msg = str(err.value)
    assert "arbitrary unpickling" in msg and "trusted environment" in msg and "safetensors" in msg


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_unreadable_files_give_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        read_checkpoint(path)


def test_missing_file_and_non_dict(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pth")
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="expected a dict"):
        read_checkpoint(path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad)


def test_safetensors_round_trip_and_sha256(tmp_path: Path) -> None:
    src = _Tiny()
    load_state(src, _state(1))
    path = tmp_path / "tiny.safetensors"
    digest = save_safetensors(src, path, metadata={"model": "tiny"})
    assert digest == sha256_file(path) and len(digest) == 64
    assert verify_sha256(path, digest[:12]) == digest
    with pytest.raises(CheckpointError, match="does not match"):
        verify_sha256(path, "0" * 64)
    dst = _Tiny()
    assert load_checkpoint(dst, path).ok
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])


def test_meta_model_receives_tensors_by_assignment() -> None:
    with torch.device("meta"):
        model = _Tiny()
    state = _state(2)
    load_state(model, state)
    assert not model.conv.weight.is_meta
    assert torch.equal(model.conv.weight, state["conv.weight"])


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
