"""``stream-monitor weights fetch`` against a loopback stand-in for Google Drive.

The CLI runs in-process through Typer's runner (the real command, no mocks) against
:class:`tests.support.drive_server.FakeDrive` on 127.0.0.1; the checkpoints it serves are
full-size CADDM ResNet-34 layouts whose tensors are zero-stride views of one zero (a few
MB instead of 176). Foreign hosts are :class:`RecordingListener`s on 127.0.0.2/127.0.0.3
that must see no connection. Nothing here contacts the internet.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from typer.testing import CliRunner, Result

import models
from models import caddm, sta, styleflow
from stream_monitor.cli import app
from stream_monitor.weights_sources import SOURCES, lookup
from tests.support.drive_server import DriveFile, FakeDrive
from tests.support.listeners import RecordingListener
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
CADDM_ID = lookup("caddm_resnet34").drive_id  # type: ignore[union-attr]
STA_ID = lookup("sta").drive_id  # type: ignore[union-attr]


def _authors_layout(model: str, pad_floats: int = 0) -> bytes:
    """A CADDM checkpoint in the authors' layout for the full-size ``model``: every tensor a
    zero-stride view of one zero, plus ``opt_state`` padding (to make the body span several
    of the client's 1 MiB reads)."""
    state = models.create_model(model, device="meta").state_dict()
    zeros: dict[torch.dtype, torch.Tensor] = {}
    network = {k: zeros.setdefault(v.dtype, torch.zeros((), dtype=v.dtype)).expand(v.shape) for k, v in state.items()}
    buf = io.BytesIO()
    torch.save({"network": network, "opt_state": {"pad": torch.zeros(pad_floats)}, "epoch": 3}, buf)
    return buf.getvalue()


class _Payload:
    """Pickles to a call that would create the marker file if it were ever executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def r34() -> bytes:
    return _authors_layout("caddm_resnet34", pad_floats=3 << 18)  # ~3 MiB


@pytest.fixture
def drive() -> Iterator[FakeDrive]:
    server = FakeDrive()
    yield server
    server.close()


def _fetch(drive_url: str, weights: Path, *args: str) -> Result:
    env = {"STREAM_MONITOR_WEIGHTS_BASE_URL": drive_url}
    return CliRunner().invoke(app, ["weights", "fetch", *args, "--weights-dir", str(weights)], env=env,
                              catch_exceptions=False)


def _one_error_line(res: Result, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.rstrip().splitlines()[-1] == errors[0]
    return errors[0]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(weights: Path) -> dict[str, Any]:
    return json.loads((weights / "manifest.json").read_text())  # type: ignore[no-any-return]


def test_source_table_matches_the_model_cards() -> None:
    cards = {c.name: c for c in (caddm.CARD_B4, caddm.CARD_B3, caddm.CARD_R34, sta.STA_CARD, styleflow.PSP_CARD)}
    assert sorted(cards) == sorted(s.model for s in SOURCES)
    for s in SOURCES:
        spec, = cards[s.model].checkpoints
        assert spec.filename == s.filename and s.drive_id in spec.source, s.model
        if s.model != "styleflow_psp_encoder":  # its card leaves the generator's terms open; the table is stricter
            assert ("BY-NC" in spec.licence) == s.non_commercial, s.model
    assert lookup("sta").non_commercial and lookup("styleflow_psp_encoder").non_commercial  # type: ignore[union-attr]
    assert not lookup("caddm").non_commercial and lookup("caddm").model == "caddm_efficientnet_b4"  # type: ignore[union-attr]
    assert lookup("styleflow") is None and lookup("styleflow_stylegru") is None


def test_fetch_through_the_confirm_page_records_then_verifies(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[CADDM_ID] = DriveFile(r34)
    weights = tmp_path / "w"
    res = _fetch(drive.url, weights, "caddm_resnet34")
    assert res.exit_code == 0, res.stderr
    target = weights / "resnet34.pkl"
    assert target.read_bytes() == r34 and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert f"downloaded caddm_resnet34: {target} ({len(r34)} bytes, sha256 {_sha(r34)})" in res.stdout
    assert "licence: Apache-2.0" in res.stderr
    # Drive's flow: /uc redirects, the download page asks for confirmation, the form gives the bytes.
    assert [(r.path, r.query.get("confirm")) for r in drive.requests] == [("/uc", None), ("/download", None),
                                                                          ("/download", "t")]
    assert drive.requests[-1].query["uuid"] == "3f2c9a0e-uuid" and drive.requests[-1].query["id"] == CADDM_ID
    manifest = _manifest(weights)
    assert manifest["downloads"][CADDM_ID]["size"] == len(r34) and manifest["downloads"][CADDM_ID]["sha256"] == _sha(r34)
    assert manifest["files"]["resnet34.pkl"] == {"model": "caddm_resnet34", "size": len(r34), "sha256": _sha(r34),
                                                 "drive_id": CADDM_ID}
    assert sorted(p.name for p in weights.iterdir()) == ["manifest.json", "resnet34.pkl"]  # no .part left

    # Present: checked against the manifest, not downloaded again.
    again = _fetch(drive.url, weights, "caddm_resnet34")
    assert again.exit_code == 0 and f"present caddm_resnet34: {target}" in again.stdout
    assert len(drive.requests) == 3

    # A changed file no longer matches its record.
    target.write_bytes(r34[:-1] + bytes([r34[-1] ^ 1]))
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert "resnet34.pkl" in line and "recorded when it was fetched" in line


def test_verify_holds_a_fetched_file_to_the_manifest(tmp_path: Path, drive: FakeDrive) -> None:
    b4 = _authors_layout("caddm_efficientnet_b4")
    drive.files[CADDM_ID] = DriveFile(b4)
    weights = tmp_path / "w"
    res = _fetch(drive.url, weights, "caddm")  # the detector's default model
    assert res.exit_code == 0 and "downloaded caddm_efficientnet_b4" in res.stdout, res.stderr

    def verify() -> Result:
        return CliRunner().invoke(app, ["weights", "verify", "--weights-dir", str(weights), "--detectors", "caddm"],
                                  catch_exceptions=False)

    ok = verify()
    assert ok.exit_code == 0 and f"efficientnet-b4.pkl sha256 {_sha(b4)}" in ok.stdout, ok.stdout
    # Same layout, other bytes (the epoch): loads fine, but is not the file that was fetched.
    changed = io.BytesIO()
    torch.save({**torch.load(io.BytesIO(b4), weights_only=True), "epoch": 4}, changed)
    (weights / "efficientnet-b4.pkl").write_bytes(changed.getvalue())
    bad = verify()
    assert bad.exit_code == 2 and "caddm: FAILED" in bad.stdout and "recorded when it was fetched" in bad.stdout


def test_resume_after_a_dropped_connection(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[CADDM_ID] = DriveFile(r34, drop_after=len(r34) // 2 + 12345)
    weights = tmp_path / "w"
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 1)
    part = weights / f"drive-{CADDM_ID}.part"
    assert "run the command again to resume" in line
    kept = part.stat().st_size
    assert 0 < kept < len(r34) and part.read_bytes() == r34[:kept]
    assert not (weights / "resnet34.pkl").exists() and not (weights / "manifest.json").exists()

    res = _fetch(drive.url, weights, "caddm_resnet34")
    assert res.exit_code == 0, res.stderr
    assert f"resuming at byte {kept}" in res.stderr
    assert drive.requests[-1].range == f"bytes={kept}-" and drive.requests[-1].query.get("confirm") == "t"
    assert (weights / "resnet34.pkl").read_bytes() == r34 and not part.exists()
    assert _manifest(weights)["downloads"][CADDM_ID]["sha256"] == _sha(r34)


def test_a_wrong_size_or_hash_against_the_manifest_is_refused(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    weights = tmp_path / "w"
    drive.files[CADDM_ID] = DriveFile(r34, confirm=False)
    assert _fetch(drive.url, weights, "caddm_resnet34").exit_code == 0
    (weights / "resnet34.pkl").unlink()
    recorded = _manifest(weights)

    drive.files[CADDM_ID] = DriveFile(r34 + b"\0" * 100, confirm=False)  # another release: announced size differs
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert f"{len(r34) + 100} bytes on Drive" in line and f"is {len(r34)} bytes" in line

    drive.files[CADDM_ID] = DriveFile(r34 + b"\0" * 100, confirm=False, no_length=True)  # no size announced
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert "more than" in line

    same_size = r34[:-1] + bytes([r34[-1] ^ 1])
    drive.files[CADDM_ID] = DriveFile(same_size, confirm=False)
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert f"sha256 {_sha(same_size)}" in line and _sha(r34) in line

    assert sorted(p.name for p in weights.iterdir()) == ["manifest.json"]  # nothing kept, no .part
    assert _manifest(weights) == recorded


def test_a_truncated_download_is_not_kept_as_a_checkpoint(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[CADDM_ID] = DriveFile(r34, confirm=False, drop_after=1000)
    weights = tmp_path / "w"
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 1)
    assert "cannot download" in line or "stopped at" in line
    assert not (weights / "resnet34.pkl").exists() and not (weights / "manifest.json").exists()


def test_non_commercial_file_needs_accept_licence(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[STA_ID] = DriveFile(r34)
    weights = tmp_path / "w"
    line = _one_error_line(_fetch(drive.url, weights, "sta"), 2)
    assert "sta_clip_vitl14" in line and "CC BY-NC 4.0" in line and "--accept-licence" in line
    assert drive.requests == [] and not weights.exists()

    # Accepted: downloaded, but a CADDM file served as StA's does not fit and is deleted.
    res = _fetch(drive.url, weights, "sta", "--accept-licence")
    line = _one_error_line(res, 2)
    assert "accepted with --accept-licence" in res.stderr
    assert "refused and deleted" in line and "does not fit sta_clip_vitl14" in line
    assert sorted(p.name for p in weights.iterdir()) == []


def test_unsafe_pickle_is_refused_before_it_runs(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    marker = tmp_path / "payload-ran"
    buf = io.BytesIO()
    torch.save({"network": {"fc.weight": torch.zeros(2, 2)}, "hook": _Payload(marker)}, buf)
    drive.files[CADDM_ID] = DriveFile(buf.getvalue())
    weights = tmp_path / "w"
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert "refused to load" in line and "refused and deleted" in line
    assert not marker.exists()
    assert sorted(p.name for p in weights.iterdir()) == []  # no checkpoint, no .part, no manifest record


def test_foreign_hosts_are_never_contacted(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    other, third = RecordingListener("127.0.0.2"), RecordingListener("127.0.0.3")
    try:
        weights = tmp_path / "w"
        drive.files[CADDM_ID] = DriveFile(r34, redirect_to=f"http://{other.address}/download?id={CADDM_ID}")
        line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
        assert "refused to follow a redirect" in line and "127.0.0.2" in line
        drive.files[CADDM_ID] = DriveFile(r34, form_action=f"http://{third.address}/download")
        line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
        assert "refused to follow the confirmation form" in line
        drive.files[CADDM_ID] = DriveFile(r34, form_id="someOtherFile")
        line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
        assert "names another file" in line
        assert other.connections == [] and third.connections == []
        assert not any(r.query.get("id") == "someOtherFile" for r in drive.requests)
    finally:
        other.close()
        third.close()


def test_oversized_quota_and_offline(tmp_path: Path, drive: FakeDrive) -> None:
    weights = tmp_path / "w"
    drive.files[CADDM_ID] = DriveFile(b"", confirm=False, announce=5 << 30)
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert f"is {5 << 30} bytes, more than" in line
    drive.files[CADDM_ID] = DriveFile(b"", quota_page=True)
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 1)
    assert "Too many users have viewed or downloaded this file recently" in line
    before = len(drive.requests)
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34", "--offline"), 2)
    assert "--offline" in line and len(drive.requests) == before
    line = _one_error_line(_fetch(drive.url, weights, "styleflow"), 2)
    assert "not public" in line and "styleflow_psp_encoder" in line
    assert _one_error_line(_fetch(drive.url, weights), 2).startswith("error: name at least one")
    (weights / "manifest.json").write_text("{not json")
    line = _one_error_line(_fetch(drive.url, weights, "caddm_resnet34"), 2)
    assert "unreadable manifest" in line and len(drive.requests) == before


def test_archive_members_are_taken_by_name_only(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("checkpoints/resnet34.pkl", r34)
        z.writestr("../efficientnet-b3.pkl", b"not a checkpoint")
        z.writestr("/tmp/evil.pkl", b"x")
    drive.files[CADDM_ID] = DriveFile(buf.getvalue())
    weights = tmp_path / "w"
    res = _fetch(drive.url, weights, "caddm_resnet34")
    assert res.exit_code == 0, res.stderr
    assert (weights / "resnet34.pkl").read_bytes() == r34
    assert sorted(p.name for p in weights.iterdir()) == ["manifest.json", "resnet34.pkl"]
    assert not (tmp_path / "efficientnet-b3.pkl").exists()
    assert _manifest(weights)["files"]["resnet34.pkl"]["sha256"] == _sha(r34)
    # The archive's b3 member is no checkpoint: refused, nothing written for it.
    line = _one_error_line(_fetch(drive.url, weights, "caddm_efficientnet_b3"), 2)
    assert "efficientnet-b3.pkl" in line and "refused and deleted" in line
    assert not (weights / "efficientnet-b3.pkl").exists()


def test_a_single_checkpoint_is_kept_as_the_variant_it_fits(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[CADDM_ID] = DriveFile(r34)
    weights = tmp_path / "w"
    line = _one_error_line(_fetch(drive.url, weights, "caddm_efficientnet_b3"), 2)
    assert "caddm_efficientnet_b3: not in Drive file" in line and "caddm_resnet34 (resnet34.pkl)" in line
    assert (weights / "resnet34.pkl").read_bytes() == r34 and not (weights / "efficientnet-b3.pkl").exists()
    assert _manifest(weights)["files"]["resnet34.pkl"]["model"] == "caddm_resnet34"


# --- scripts/demo_weights.sh: the demo's choice of weights (the suite is offline) ------------------------------


def _demo_weights(weights: Path, base_url: str, detectors: str = "caddm") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(PYTHONPATH=str(ROOT), STREAM_MONITOR=f"{sys.executable} -m stream_monitor", WEIGHTS_DIR=str(weights),
               STREAM_MONITOR_WEIGHTS_BASE_URL=base_url)
    return subprocess.run(["scripts/demo_weights.sh", detectors, "caddm_resnet34"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


def test_demo_falls_back_to_random_weights_offline(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: as offline as a loopback test gets
    proc = _demo_weights(tmp_path / "w", closed)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.split("\n") == ["--weights-dir", str(tmp_path / "w"), "--random-weights", "--threshold", "0", ""]
    assert "licence: Apache-2.0" in proc.stderr and "error: " in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("demo: no detector weights could be installed")


def test_demo_runs_fetched_caddm_at_threshold_half(tmp_path: Path, drive: FakeDrive, r34: bytes) -> None:
    drive.files[CADDM_ID] = DriveFile(r34)
    proc = _demo_weights(tmp_path / "w", drive.url)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.split("\n") == ["--weights-dir", str(tmp_path / "w"), "--detectors", "caddm",
                                       "--threshold", "0.5", ""]
    assert (tmp_path / "w" / "resnet34.pkl").read_bytes() == r34
    assert "licence: Apache-2.0" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("demo: running caddm with the authors' weights")
