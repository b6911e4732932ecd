"""The service's CUDA paths, checked where a GPU is (every test here skips without one).

The GPU check (``scripts/gpu-check.sh``, its ``tests`` step) runs this module with the other
tests that take a CUDA path when a device is present (``stream_monitor.bench.gpu_plan.CUDA_TESTS``):
the engine on CUDA (one shared worker thread for every lane, crops aligned on the device),
frames uploaded through pinned memory, bf16/fp16 autocast on the golden parity inputs, and
``torch.compile`` (inductor, and CUDA graphs with ``reduce-overhead``) against eager.
CUDA face detection and NVDEC are in ``test_faces_detect.py`` and ``test_hwaccel.py``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Callable

import numpy as np
import pytest
import torch

import models
from models.card import normalize_crops
from models.sta import CLIP_MEAN, CLIP_STD
from stream_monitor.bench.presets import PRESETS
from stream_monitor.faces.align import Aligner, stack_on_device, to_device
from stream_monitor.inference.runners import AUTOCAST_TOLERANCE, StyleFlowRunner, autocast, compiled
from tests.models import test_caddm, test_sta
from tests.stream_monitor import test_device_align as align
from tests.stream_monitor.test_engine import _engine, _frames

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
# Compiled and eager forwards of the same weights on the same input: the same numbers up to
# float reordering inside fused kernels.
COMPILE_TOLERANCE = 1e-4


def test_cuda_engine_runs_every_lane_on_one_worker_thread() -> None:
    engine = _engine(detectors={"device": "cuda", "enabled": ["caddm", "sta"], "caddm": {"sample_fps": "all"},
                                "sta": {"sample_fps": "all"}})
    assert engine.device.type == "cuda" and engine.shared_worker
    assert engine.align_device is not None and engine.align_device.type == "cuda"  # faces.align_device: auto

    async def main() -> tuple[list[float], list[list[int]]]:
        await engine.start()
        await engine.open_stream("a")
        analyses = await asyncio.gather(*(a for f in _frames("a", 12) if (a := engine.analyse(f)) is not None))
        clips = [c for a in analyses for c in a.clips]
        clips += (await engine.close_stream("a")).clips
        scores = list(await asyncio.gather(*(engine.score(c) for c in clips)))
        await engine.stop()
        return scores, [[it.seq for it in c.items] for c in clips if c.detector == "sta"]

    scores, sta_windows = asyncio.run(main())
    assert engine.lane_workers == {}, "on CUDA no lane gets a thread of its own"
    assert engine.worker.busy_seconds > 0
    assert sta_windows == [list(range(8)), list(range(4, 12))]  # as on the CPU (test_engine)
    assert scores and all(0.0 <= s <= 1.0 for s in scores)


def test_cuda_frames_go_up_through_pinned_memory_and_crops_match_opencv() -> None:
    host = align._engine("cpu").runners["caddm"].aligner
    device = Aligner(host.template, CUDA)
    for i in (0, 5, 11):
        image, faces = align._frame(i), align._faces(i)
        frame = to_device(image, CUDA)  # pinned host copy, non-blocking upload
        assert frame.is_cuda and torch.equal(frame.cpu(), torch.from_numpy(image))
        crops = device.patches(frame, faces)
        assert crops.is_cuda
        ref = np.stack([host.patch(image, f)[0] for f in faces])
        diff = align._diff(ref, crops.cpu().numpy())
        assert diff.max() <= align.MAX_GREY_DIFF and diff.mean() < align.MEAN_GREY_DIFF, (diff.max(), diff.mean())
        stacked = stack_on_device(list(ref), CUDA)  # host crops: one upload of the stack
        assert stacked.is_cuda and torch.equal(stacked.cpu(), torch.from_numpy(ref))


def _golden(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    if name == "sta_clip_vitl14":
        tensors, meta = test_sta._golden()
        size = json.loads(meta["overrides"])["img_size"]
        x = normalize_crops(tensors["crops"], crop_size=size, input_size=size, colour_order="RGB", scale=255.0,
                            mean=CLIP_MEAN, std=CLIP_STD)
        return test_sta._small_model(int(meta["seed"])), x
    model, x, _ = test_caddm._golden_model_and_input(name)
    return model, x


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name", [*test_caddm.NAMES, "sta_clip_vitl14"])
def test_cuda_autocast_on_the_golden_inputs_is_within_tolerance(name: str, precision: str) -> None:
    model, x = _golden(name)
    with torch.no_grad():
        cpu = model(x)
        model, x = model.to(CUDA), x.to(CUDA)
        fp32 = model(x)
        with autocast(CUDA, precision):  # type: ignore[arg-type]
            low = model(x)
    assert low.dtype in (torch.float32, torch.bfloat16, torch.float16)
    device_diff = (fp32.cpu() - cpu).abs().max().item()  # cuDNN may use TF32 for convolutions
    assert device_diff <= AUTOCAST_TOLERANCE, f"{name}: CUDA fp32 vs CPU |dp| = {device_diff:.2g}"
    diff = (low.float() - fp32).abs().max().item()
    assert 0 < diff <= AUTOCAST_TOLERANCE, f"{name} {precision}: |dp| = {diff:.2g}"


def test_cuda_graphs_of_the_compiled_forward_match_eager() -> None:
    # reduce-overhead: inductor's kernels and CUDA graphs (the compile step times the modes).
    small = PRESETS["small"]["caddm"]
    torch.manual_seed(0)
    model = models.create_model(small["model"], **small["overrides"]).to(CUDA).eval()
    model.to(memory_format=torch.channels_last)  # as PerFrameRunner on CUDA
    torch._dynamo.reset()
    forward: Callable[[torch.Tensor], torch.Tensor] = compiled(model, "reduce-overhead")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # as the worker thread runs every forward
        for batch in (4, 4, 2, 4):  # CUDA graphs are recorded per shape and replayed
            x = (torch.rand(batch, 3, 224, 224, generator=gen) * 255).to(CUDA)
            x = x.contiguous(memory_format=torch.channels_last)
            eager = model(x).float()
            out = forward(x).float().clone()  # a CUDA graph's output is overwritten by its next replay
            assert out.shape == (batch,)
            assert torch.allclose(out, eager, atol=COMPILE_TOLERANCE, rtol=0), (out - eager).abs().max().item()


def test_cuda_styleflow_runner_with_cuda_graphs_keeps_its_cached_latents() -> None:
    # The runner caches each frame's pSp latents on the window items and reuses them in later
    # batches; with reduce-overhead those latents come out of a CUDA graph, whose output memory
    # the next replay overwrites unless the runner copies it.
    engine = _engine(detectors={"device": "cuda", "enabled": ["styleflow"], "styleflow": {"sample_fps": "all"}})
    eager = engine.runners["styleflow"]
    assert isinstance(eager, StyleFlowRunner)
    graphs = StyleFlowRunner(eager.name, eager.model, eager.card, eager.model_id, eager.spec, eager.device,
                         align_on_device=engine.align_device is not None, compile="reduce-overhead")
    first = [c for c in align._windows(engine)[1] if c.detector == "styleflow"]
    second = [c for c in align._windows(engine)[1] if c.detector == "styleflow"]  # fresh items: an empty cache
    assert len(first) == len(second) == 2, "one window per face"
    torch._dynamo.reset()
    with torch.inference_mode():
        expected = [eager.run([c])[0] for c in first]
        one_by_one = [graphs.run([c])[0] for c in second]  # the second replay follows the first's caching
        together = graphs.run(second)  # every latent from the cache now
    assert graphs.frames_computed == 2 * 16, "16 real frames per window, each encoded once"
    np.testing.assert_allclose(one_by_one, expected, rtol=0, atol=COMPILE_TOLERANCE)
    np.testing.assert_allclose(together, expected, rtol=0, atol=COMPILE_TOLERANCE)
