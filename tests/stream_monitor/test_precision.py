"""``detectors.precision``: autocast stays within the stated tolerance of fp32.

The inputs are the golden parity inputs of ``tests/models`` (seeded small configurations
whose fp32 outputs match the authors' modules to 1e-4; built with those tests' own
loaders), run on the CPU in fp32 and under the runners' bf16 autocast. The CPU has no
fp16 autocast in the runners (CUDA only), so bf16 is what can be checked here.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

import models
from models.card import normalize_crops
from models.layers.stylegru import StyleGRU, StyleGRUConfig
from models.sta import CLIP_MEAN, CLIP_STD
from models.styleflow import StyleFlow
from stream_monitor.config import ConfigError, load_config
from stream_monitor.inference.runners import AUTOCAST_TOLERANCE, autocast
from tests.models import test_caddm, test_sta, test_styleflow, test_styleflow_parts
from tests.models.seeded import fill_seeded, golden_metadata
from tests.stream_monitor.test_engine import _engine, _frames

CPU = torch.device("cpu")
Case = Callable[[], Callable[[], torch.Tensor]]  # builds (model, inputs) and returns the forward


def _caddm(name: str) -> Case:
    def build() -> Callable[[], torch.Tensor]:
        model, x, _ = test_caddm._golden_model_and_input(name)
        return lambda: model(x)
    return build


def _sta() -> Callable[[], torch.Tensor]:
    tensors, meta = test_sta._golden()
    model = test_sta._small_model(int(meta["seed"]))
    size = json.loads(meta["overrides"])["img_size"]
    x = normalize_crops(tensors["crops"], crop_size=size, input_size=size, colour_order="RGB", scale=255.0,
                        mean=CLIP_MEAN, std=CLIP_STD)
    return lambda: model(x)


def _styleflow_content() -> Callable[[], torch.Tensor]:
    golden = load_file(str(test_styleflow.GOLDEN))
    model = fill_seeded(models.create_model("styleflow_content", **test_styleflow.SMALL), test_styleflow.SEED,
                        test_styleflow.RENAME).eval()
    return lambda: model(golden["video"], golden["style"])


def _stylegru() -> Callable[[], torch.Tensor]:
    path = test_styleflow_parts.GRU_GOLDEN
    golden = load_file(str(path))
    model = fill_seeded(StyleGRU(StyleGRUConfig(**test_styleflow_parts._overrides(path))),
                        int(golden_metadata(path)["seed"])).eval()
    return lambda: model(golden["flow"])


CASES: dict[str, Case] = {**{name: _caddm(name) for name in test_caddm.NAMES}, "sta_clip_vitl14": _sta,
                          "styleflow_content": _styleflow_content, "styleflow_stylegru": _stylegru}


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_autocast_on_the_golden_inputs_is_within_tolerance(case: str) -> None:
    forward = CASES[case]()
    with torch.no_grad():
        fp32 = forward()
        with autocast(CPU, "bf16"):
            bf16 = forward()
    diff = (bf16.float() - fp32).abs().max().item()
    # Measured on the CPU (torch 2.14): CADDM-B4 5.4e-4, -B3 6.0e-3, -R34 9.8e-4, StA 1.3e-3,
    # content 8.7e-4, StyleGRU 1.4e-3.
    assert diff <= AUTOCAST_TOLERANCE, f"{case}: |dp| = {diff:.4f}"
    assert diff > 0, "autocast changed nothing: the forward did not run in bf16"


def test_styleflow_runner_path_within_tolerance() -> None:
    """The composite along the runner's split: pSp latents under autocast, kept float32 (as
    cached), then StyleGRU + content under autocast — against the fp32 forward."""
    model = fill_seeded(models.create_model("styleflow", **test_styleflow.SMALL_PARTS), 3).eval()
    assert isinstance(model, StyleFlow)
    n, t, s = 3, model.cfg.clip_len, model.cfg.crop_size
    crops = test_styleflow._crops((n, t, s, s, 3), 5).permute(0, 1, 4, 2, 3).float()
    frames = crops.reshape(n * t, 3, s, s)
    with torch.no_grad():
        fp32 = model(crops)
        size = model.cfg.content.input_size
        video = model.content_input(frames).reshape(n, t, 3, size, size).transpose(1, 2)
        with autocast(CPU, "bf16"):
            latents = model.encode_frames(frames).float()
            bf16 = model.forward_from_latents(latents.reshape(n, t, *latents.shape[1:]), video).float()
    diff = (bf16 - fp32).abs().max().item()
    assert 0 < diff <= AUTOCAST_TOLERANCE, diff


def test_the_engine_applies_the_configured_precision() -> None:
    def scores(precision: str) -> list[float]:
        engine = _engine(detectors={"enabled": ["caddm", "sta"], "precision": precision,
                                    "caddm": {"sample_fps": "all", "window_len": 4, "window_stride": 4},
                                    "sta": {"sample_fps": "all"}})
        assert all(r.precision == precision for r in engine.runners.values())

        async def main() -> list[float]:
            await engine.start()
            await engine.open_stream("a")
            analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 8)))
            clips = [c for a in analyses for c in a.clips]
            assert sorted(c.detector for c in clips) == ["caddm", "caddm", "sta"]
            out = list(await asyncio.gather(*(engine.score(c) for c in clips)))
            await engine.stop()
            return out

        return asyncio.run(main())

    fp32, bf16 = scores("fp32"), scores("bf16")
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert max(diffs) <= AUTOCAST_TOLERANCE and max(diffs) > 0, diffs


def test_fp16_needs_cuda(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="CUDA"):
        autocast(CPU, "fp16")
    # The engine keeps one config usable on GPU and CPU hosts: fp16 falls back to fp32, loudly.
    with caplog.at_level(logging.WARNING, logger="stream_monitor.inference.engine"):
        engine = _engine(detectors={"enabled": ["caddm"], "precision": "fp16"})
    assert engine.runners["caddm"].precision == "fp32"
    assert any("fp16 needs CUDA" in r.getMessage() for r in caplog.records)


def test_precision_is_validated() -> None:
    assert load_config(overrides={}, environ={}).detectors.precision == "fp32"
    with pytest.raises(ConfigError, match=r"detectors\.precision"):
        load_config(overrides={"detectors": {"precision": "int8"}}, environ={})


def test_channels_last_where_it_pays_off_on_a_cpu() -> None:
    from stream_monitor.inference.runners import prefers_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    with torch.device("meta"):  # layouts only: no weights allocated
        resnet = models.create_model("caddm_resnet34")
        effnet = models.create_model("caddm_efficientnet_b4")
        psp = models.create_model("styleflow").psp
    assert prefers_channels_last(resnet, cpu) and prefers_channels_last(psp, cpu)
    assert not prefers_channels_last(effnet, cpu), "depthwise convolutions are slower in NHWC on a CPU"
    assert prefers_channels_last(effnet, cuda) and prefers_channels_last(resnet, cuda)
    # The engine's runners follow it: the conv weights are NHWC.
    engine = _engine(detectors={"enabled": ["caddm", "styleflow"]})
    for name, part in (("caddm", engine.runners["caddm"].model), ("styleflow", engine.runners["styleflow"].model.psp)):
        assert engine.runners[name].channels_last, name
        convs = [p for p in part.parameters() if p.dim() == 4 and min(p.shape[2:]) > 1]
        assert convs and all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
                             for p in convs), name


def test_compiled_forwards_give_the_eager_scores() -> None:
    """``detectors.compile``: the runners' forwards go through torch.compile (here the aot_eager
    backend: dynamo capture + AOTAutograd, no C++ compiler needed) with the eager results."""
    from stream_monitor.config import DetectorsConfig

    assert DetectorsConfig(compile=False).compile == "off"  # YAML's bare `off`
    with pytest.raises(ValueError, match="compile"):
        DetectorsConfig(compile="fast")
    torch._dynamo.reset()
    scores = {}
    for mode in ("off", "aot_eager"):
        engine = _engine(detectors={"enabled": ["caddm", "styleflow"], "compile": mode})
        if mode != "off":
            assert all(type(r._forward).__name__ == "OptimizedModule" for r in engine.runners.values())

        async def main() -> dict[str, list[float]]:
            await engine.start()
            await engine.open_stream("a")
            analyses = await asyncio.gather(*(engine.analyse(f) for f in _frames("a", 40)))
            clips = [c for a in analyses if a is not None for c in a.clips]
            clips += (await engine.close_stream("a")).clips
            out: dict[str, list[float]] = {}
            for c in clips:
                out.setdefault(c.detector, []).append(await engine.score(c))
            await engine.stop()
            return out

        scores[mode] = asyncio.run(main())
    assert set(scores["off"]) == {"caddm", "styleflow"}
    for d in scores["off"]:
        assert len(scores["off"][d]) == len(scores["aot_eager"][d]) > 0
        assert max(abs(a - b) for a, b in zip(scores["off"][d], scores["aot_eager"][d])) < 1e-5, d
