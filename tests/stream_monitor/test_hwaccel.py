"""Hardware video decode (``ingest.hwaccel``): choice, fallback to software, identical frames.

The hosts the suite runs on may or may not have a decode device, so tests that need "no
device" or "a device" ask :func:`device_problem` and skip, naming the reason, otherwise.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from av.codec.hwaccel import HWAccel
from pydantic import ValidationError

from stream_monitor.config import HWAccelSetting, IngestConfig
from stream_monitor.ingest.av_reader import (
    HWACCEL_PREFERENCE,
    choose_device,
    device_problem,
    open_container,
    read_video,
    resolve_decoder,
)
from stream_monitor.ingest.file import FileSource
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from tests.support.media import write_video

LOGGER = "stream_monitor.ingest.av_reader"


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A 1 s, 12 fps, 160x120 H.264 MP4 of the synthetic face."""
    spec = SyntheticSpec(fps=12, width=160, height=120, faces=1, seconds=1)
    return write_video(tmp_path / "clip.mp4", synthetic_frames(spec), fps=spec.fps)


def _images(path: Path, hwaccel: HWAccelSetting) -> list[np.ndarray]:
    """Every frame of ``path`` through the file source, as fast as it decodes."""
    source = FileSource("cam", str(path), IngestConfig(realtime=False, hwaccel=hwaccel))
    return [f.image for f in source.frames()]


def test_config_takes_the_device_types_and_names_a_bad_one() -> None:
    assert IngestConfig().hwaccel == "auto"
    values: tuple[HWAccelSetting, ...] = ("auto", "none", "cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")
    for value in values:
        assert IngestConfig(hwaccel=value).hwaccel == value
    with pytest.raises(ValidationError) as info:
        IngestConfig(hwaccel="nvdec")  # type: ignore[arg-type]
    (error,) = info.value.errors()
    assert error["loc"] == ("hwaccel",)
    assert "'auto'" in error["msg"] and "'cuda'" in error["msg"]


def test_choose_device_follows_the_preference_order() -> None:
    asked: list[str] = []

    def usable_of(present: set[str]) -> Callable[[str], bool]:
        def usable(device: str) -> bool:
            asked.append(device)
            return device in present
        return usable

    assert HWACCEL_PREFERENCE == ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va")
    assert choose_device("auto", usable_of({"qsv", "vaapi", "cuda"})) == "cuda"
    assert asked == ["cuda"]  # stops at the first usable device: probing may create one
    asked.clear()
    assert choose_device("auto", usable_of({"d3d11va", "qsv"})) == "qsv"
    assert asked == ["cuda", "vaapi", "qsv"]
    assert choose_device("auto", usable_of(set())) is None
    assert choose_device("auto", usable_of({"vulkan"})) is None  # not in the preference list
    assert choose_device("vaapi", usable_of({"cuda", "vaapi"})) == "vaapi"
    assert choose_device("vaapi", usable_of({"cuda"})) is None  # never another device
    asked.clear()
    assert choose_device("none", usable_of({"cuda"})) is None
    assert asked == []


def test_auto_without_a_device_decodes_in_software_identically(clip: Path) -> None:
    usable = [d for d in HWACCEL_PREFERENCE if device_problem(d) is None]
    if usable:
        pytest.skip(f"this host can decode on {usable[0]}")
    assert resolve_decoder("auto") == "software"
    auto, software = _images(clip, "auto"), _images(clip, "none")
    assert len(software) == 12
    assert len(auto) == len(software) and all(np.array_equal(a, b) for a, b in zip(auto, software))


@pytest.mark.parametrize("device", ["cuda", "vaapi"])
def test_a_missing_device_falls_back_to_software(clip: Path, device: HWAccelSetting,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    problem = device_problem(device)
    if problem is None:
        pytest.skip(f"this host can decode on {device}")
    assert resolve_decoder(device) == "software"
    caplog.set_level(logging.INFO, logger=LOGGER)
    fallback = _images(clip, device)
    opened = [r for r in caplog.records if r.name == LOGGER and "decoding h264 160x120" in r.getMessage()]
    assert len(opened) == 1
    assert opened[0].getMessage().endswith(f"in software (ingest.hwaccel={device}: {problem})")
    software = _images(clip, "none")
    assert len(fallback) == len(software) == 12
    assert all(np.array_equal(a, b) for a, b in zip(fallback, software))


def test_an_open_that_fails_on_the_device_reopens_in_software(clip: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # Without a CUDA driver, PyAV fails creating the device inside av.open (after the demuxer
    # opened), which is the path a device that passed the probe but fails later takes.
    if device_problem("cuda") is None:
        pytest.skip("this host can decode on cuda")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    container = open_container(str(clip), "clip.mp4", {}, None, None,
                               HWAccel("cuda", allow_software_fallback=True))
    try:
        assert not container.streams.video[0].codec_context.is_hwaccel
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    finally:
        container.close()
    assert len(frames) == 12
    assert any("opening with hardware decode failed" in r.getMessage() for r in caplog.records)


def test_an_available_device_gives_the_same_rgb_frames(clip: Path, caplog: pytest.LogCaptureFixture) -> None:
    usable = [d for d in HWACCEL_PREFERENCE if device_problem(d) is None]
    if not usable:
        pytest.skip("no hardware decode device on this host")
    caplog.set_level(logging.INFO, logger=LOGGER)
    hardware = [f.image for f in read_video("cam", str(clip), shown="clip.mp4", hwaccel="auto")]
    assert any(f"on {usable[0]}" in r.getMessage() for r in caplog.records)
    software = _images(clip, "none")
    assert len(hardware) == len(software) == 12
    for a, b in zip(hardware, software):
        assert a.dtype == np.uint8 and a.shape == b.shape == (120, 160, 3)
        # The same H.264 pictures; only the YUV->RGB path (NV12 vs planar) may round differently.
        assert np.abs(a.astype(np.int16) - b.astype(np.int16)).mean() < 2.0
