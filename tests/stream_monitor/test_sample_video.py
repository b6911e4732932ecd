"""``python -m stream_monitor.ingest.sample_video``: the compose cpu profile's sample video."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import av
import numpy as np

from stream_monitor.ingest.sample_video import main
from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec

ROOT = Path(__file__).resolve().parents[2]


def test_writes_the_moving_face_and_keeps_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "sample.mp4"
    assert main([str(out), "--seconds", "0.5", "--fps", "10", "--size", "160x120"]) == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == (120, 160, 3)
    scene = SyntheticScene(SyntheticSpec(fps=10, width=160, height=120))
    for i in (0, 4):  # the synthetic scene's frames, up to H.264 loss
        assert np.abs(frames[i].astype(np.int16) - scene.render(i)).mean() < 6
    assert not list(tmp_path.glob("*.partial"))
    # Kept as it is without --force (the compose service runs at every `up`).
    before = out.stat().st_mtime_ns
    assert main([str(out), "--seconds", "0.2"]) == 0 and out.stat().st_mtime_ns == before
    assert main([str(out), "--seconds", "0.2", "--fps", "10", "--force"]) == 0
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 2


def test_bad_arguments_end_in_one_line(tmp_path: Path) -> None:
    cases = [(["--size", "161x120"], 2, "even width and height"), (["--seconds", "0"], 2, "--seconds must be > 0"),
             (["--size", "big"], 2, "bad parameter value")]
    for args, code, text in cases:
        result = subprocess.run([sys.executable, "-m", "stream_monitor.ingest.sample_video",
                                 str(tmp_path / "x.mp4"), *args], cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == code and text in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    result = subprocess.run([sys.executable, "-m", "stream_monitor.ingest.sample_video",
                             str(tmp_path / "missing" / "x.mp4"), "--seconds", "0.2"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "cannot write" in result.stderr and "Traceback" not in result.stderr
