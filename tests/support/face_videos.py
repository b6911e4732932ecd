"""Small real face videos and the small evaluation configuration, written at test time.

The "real" videos are the synthetic moving astronaut face (public domain,
:mod:`stream_monitor.ingest.synthetic`), each cut from a different stretch of its path so
that every video holds the face at other positions. Small frames and a low frame rate
keep face detection and the detectors cheap on a CPU; the detectors' windows still fill
(StyleFlow's 32-frame window is reflect-padded from 16 frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from stream_monitor.ingest.synthetic import SyntheticScene, SyntheticSpec
from tests.support.media import write_video
from tests.support.small import small_config

FPS = 12
SIZE = (192, 144)


def write_face_videos(folder: Path, count: int, seconds: float = 2.0, fps: int = FPS,
                      size: tuple[int, int] = SIZE, static: bool = False) -> list[Path]:
    """``count`` H.264 MP4s ``real_<k>.mp4`` of the moving face; ``static``: the same frame
    repeated (a face that does not move, so frame-to-frame changes are the recipes' own)."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = SyntheticScene(SyntheticSpec(fps=fps, width=size[0], height=size[1], faces=1))
    frames = max(1, round(seconds * fps))
    paths = []
    for k in range(count):
        start = k * 3 * fps  # 3 s further along the face's path per video
        images = [scene.render(start if static else start + i) for i in range(frames)]
        paths.append(write_video(folder / f"real_{k}.mp4", images, fps=fps))
    return paths


def eval_config(enabled: list[str] | None = None) -> dict[str, Any]:
    """Small random-weight detectors on the CPU, sampling so that every detector scores a
    2 s, 12 fps video: CADDM and StA at 8 fps (StA: one 8-frame window per second),
    StyleFlow every frame; faces from 24 px (the test faces are about 45 px high)."""
    return small_config(detectors={"enabled": enabled or ["caddm", "sta", "styleflow"],
                                   "caddm": {"sample_fps": 8.0}, "sta": {"sample_fps": 8.0}},
                        faces={"min_size": 24})


def write_eval_config(path: Path, enabled: list[str] | None = None) -> Path:
    path.write_text(yaml.safe_dump(eval_config(enabled)), encoding="utf-8")
    return path


def synth_dataset(base: Path, reals: int = 2, seconds: float = 2.0) -> Path:
    """``base/ds``: ``synth``'s FF++ layout made from ``reals`` generated face videos (each real
    video and its three pseudo-fakes), with the small evaluation configuration's faces."""
    from stream_monitor.config import load_config
    from stream_monitor.synth.build import SynthOptions, synthesize

    write_face_videos(base / "reals", reals, seconds)
    synthesize(base / "reals", base / "ds", load_config(None, eval_config()), SynthOptions(), progress=False)
    return base / "ds"
