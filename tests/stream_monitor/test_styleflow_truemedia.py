"""``detectors.styleflow.model: styleflow_truemedia`` through the engine and the offline pipeline.

TrueMedia's deployed StyleFlow is a clip model (content branch only): it runs without the
pSp latent cache, and its video score is sigmoid(mean clip logit), which the engine gives
from the window scores (each keeps its clip's logit).
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from stream_monitor.config import load_config
from stream_monitor.inference.engine import Engine
from stream_monitor.inference.runners import ClipRunner, ClipScore
from stream_monitor.ingest.synthetic import SyntheticSpec, synthetic_frames
from stream_monitor.metrics import Metrics
from stream_monitor.predict import predict_video
from stream_monitor.types import Clip, Frame
from tests.support.small import small_config

# The small content-only model at the card's input sizes (32 frames of 224²).
TRUEMEDIA_SMALL: dict[str, Any] = {"width": 4, "clip_len": 32, "input_size": 224, "tte_heads": 2,
                                   "tte_dim_head": 8, "tte_mlp_dim": 32}


def _config(**styleflow: Any) -> Any:
    overrides = small_config(detectors={"enabled": ["caddm", "styleflow"]})
    # Replace (not merge) the composite's psp/stylegru/content overrides.
    overrides["detectors"]["styleflow"] = {"model": "styleflow_truemedia", "overrides": TRUEMEDIA_SMALL,
                                           "sample_fps": "all", **styleflow}
    return load_config(overrides=overrides, environ={})


def _frames(stream: str, n: int) -> list[Frame]:
    spec = SyntheticSpec(fps=25, width=320, height=240, faces=1, seconds=0)
    t0 = time.time()
    return [Frame(stream, i, i / 25, t0 + i / 25, image)
            for i, image in zip(range(n), synthetic_frames(spec))]


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_engine_runs_the_deployed_model_and_gives_their_video_score() -> None:
    engine = Engine(_config(), Metrics())
    engine.load()
    runner = engine.runners["styleflow"]
    assert isinstance(runner, ClipRunner), "no pSp/StyleGRU: a plain clip runner, no latent cache"
    assert runner.model_id == "styleflow_truemedia@random"
    assert (runner.spec.window_len, runner.spec.stride) == (32, 32)

    async def main() -> tuple[list[Clip], list[float]]:
        await engine.start()
        await engine.open_stream("a")
        pending = [engine.analyse(f) for f in _frames("a", 64)]
        analyses = await asyncio.gather(*(p for p in pending if p is not None))  # every frame is sampled
        assert len(analyses) == 64
        clips = [c for a in analyses for c in a.clips if c.detector == "styleflow"]
        # Not sheddable: this test is about the scores, not about overload on a busy host.
        scores = list(await asyncio.gather(*(engine.score(c, sheddable=False) for c in clips)))
        await engine.stop()
        return clips, scores

    clips, scores = asyncio.run(main())
    assert [[it.seq for it in c.items] for c in clips] == [list(range(32)), list(range(32, 64))]
    # Each window scored from scratch: aligned crops -> card preprocess -> the model's logit.
    model = runner.model
    logits = []
    for clip in clips:
        crops = runner.aligner.clip_tensor(clip.items, torch.device("cpu"))
        with torch.no_grad():
            logits.append(float(model.forward_logits(runner.card.preprocess(crops[None]))[0]))
    for score, logit in zip(scores, logits):
        assert isinstance(score, ClipScore) and isinstance(score, float)
        assert score.logit == pytest.approx(logit, abs=1e-5)
        assert float(score) == pytest.approx(_sigmoid(logit), abs=1e-6)
    # TrueMedia's video score: sigmoid of the mean clip logit; also after the scores travel.
    expected = _sigmoid(sum(logits) / len(logits))
    assert engine.video_score("styleflow", scores) == pytest.approx(expected, abs=1e-6)
    assert engine.video_score("styleflow", pickle.loads(pickle.dumps(scores))) == pytest.approx(expected, abs=1e-6)
    # The other detectors keep the authors' mean.
    assert engine.video_score("caddm", [0.2, 0.5]) == pytest.approx(0.35)
    with pytest.raises(ValueError, match="at least one"):
        engine.video_score("styleflow", [])

    # Logits far apart (a confident clip and unsure ones): the two definitions part ways.
    far = [ClipScore.of(4.0), ClipScore.of(-2.0), ClipScore.of(-40.0)]
    assert engine.video_score("styleflow", far) == pytest.approx(_sigmoid(-38.0 / 3), rel=1e-6)
    assert float(np.mean(far)) > 0.3  # the mean of probabilities says something else entirely
    # Plain floats (e.g. read back from JSON) go through the inverse sigmoid.
    assert engine.video_score("styleflow", [float(s) for s in far[:2]]) == pytest.approx(_sigmoid(1.0), abs=1e-7)  # float32, as theirs


def test_predict_a_video_with_the_deployed_model(face_video: Path) -> None:
    cfg = _config()
    engine = Engine(cfg, Metrics())
    engine.load()

    async def main() -> dict[str, Any]:
        await engine.start()
        try:
            return await predict_video(engine, cfg, str(face_video))
        finally:
            await engine.stop()

    result = asyncio.run(main())
    assert result["frames"] == 100 and result["faces"] >= 90
    assert result["models"]["styleflow"] == "styleflow_truemedia@random"
    assert 0.0 <= result["detectors"]["styleflow"] <= 1.0
    assert set(result["detectors"]) == {"caddm", "styleflow"}


def test_engine_finds_and_loads_true_best_strictly(tmp_path: Path) -> None:
    import models
    from stream_monitor.errors import WeightsError

    overrides = small_config(detectors={"enabled": ["styleflow"], "random_weights": False,
                                        "weights_dir": str(tmp_path)})
    overrides["detectors"]["styleflow"] = {"model": "styleflow_truemedia", "overrides": TRUEMEDIA_SMALL}
    cfg = load_config(overrides=overrides, environ={})
    with pytest.raises(WeightsError, match=r"true_best_1118\.pth"):  # the card names the deployed file
        Engine(cfg, Metrics()).load()
    torch.manual_seed(7)
    state = models.create_model("styleflow_truemedia", **TRUEMEDIA_SMALL).state_dict()
    torch.save({"model": state, "epoch": 11}, tmp_path / "true_best_1118.pth")
    engine = Engine(cfg, Metrics())
    engine.load()
    runner = engine.runners["styleflow"]
    assert isinstance(runner, ClipRunner)
    assert runner.model_id.startswith("styleflow_truemedia@") and not runner.model_id.endswith("@random")
    assert runner.model.load_report.ok and runner.model.load_report.loaded == len(state)
    loaded = runner.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
