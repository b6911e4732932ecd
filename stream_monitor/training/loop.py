"""``stream-monitor finetune``'s loop: batches, AMP, checkpoints, resume, validation, output.

Contract:

* **Start**: the configured checkpoint (``detectors.<d>.checkpoint`` or the weights folder,
  as every other command resolves it; a missing file is a ``WeightsError`` before any work),
  or with ``detectors.random_weights`` a fresh model seeded by ``seed``. The model is the
  configured one (``detectors.<d>.model`` / ``overrides``), so a small config trains the
  small model.
* **Batches**: each sample draws a class (real or fake, half each: synthetic and public sets
  are imbalanced), a training video of that class, and one of its crops (a frame for CADDM,
  an 8-frame window for StA), augmented by the detector's recipe, then the card's own
  ``preprocess`` — the live input exactly. Step ``k`` draws from ``default_rng([seed, k])``
  and seeds torch with ``(seed, k)``: a resumed run takes the same batches and dropout
  masks as an uninterrupted one, so (on the CPU) its losses are identical.
* **Precision**: on CUDA, ``torch.autocast`` fp16 and a ``GradScaler`` (``amp``); on a CPU, fp32.
* **Checkpoint** every ``checkpoint_every`` steps and at the end, in ``OUT/checkpoint/``:
  ``model.safetensors`` (all weights and BatchNorm statistics, the step in its metadata) and
  ``state.pt`` (step, optimizer, scheduler and scaler state, the loss and validation
  history, what was trained), tensors and plain types only, read with
  ``torch.load(weights_only=True)``. ``resume`` continues from there to ``steps``.
* **Validation** every ``val_every`` steps and at the end, on the held-out identities: the
  video score is the mean probability over the video's crops (the authors' video score),
  and the video AUC is :func:`stream_monitor.evaluation.metrics.binary_metrics`' AUC.
* **Output** (``OUT``): ``<model>.safetensors`` (canonical keys: ``create_model(model,
  checkpoint=...)`` loads it strictly), ``config.yaml`` (the run's detector, face and ingest
  sections with ``detectors.<d>.checkpoint`` pointing at that file: ``stream-monitor eval
  OUT/val.csv --config OUT/config.yaml`` measures it on the held-out videos, listed in
  ``val.csv``) and ``finetune.json`` (split, history, final AUC).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn

import models
from models._loading import save_safetensors

from ..config import Config
from ..errors import StreamMonitorError
from ..evaluation.datasets import Dataset, Sample
from ..evaluation.metrics import binary_metrics
from ..inference.worker import resolve_device
from ..weights import model_name, resolve
from . import caddm, sta
from .data import VideoCrops, extract_crops, split_by_identity

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class FinetuneError(StreamMonitorError):
    """Finetuning cannot start or go on (unknown detector, no crops, a checkpoint that does
    not belong to this run); the message says what to do."""


@dataclass(frozen=True)
class Recipe:
    """One detector's training recipe (see :mod:`.caddm`, :mod:`.sta`)."""

    objective: Callable[[], Objective]
    augment: Callable[[list[np.ndarray], np.random.Generator], np.ndarray]
    trainable: Callable[[nn.Module], list[nn.Parameter]]
    optimizer: str  # "adamw" or "adam"
    lr: float
    weight_decay: float
    grad_clip_value: float | None
    lr_factor: Callable[[int, int], float]


def _all_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


RECIPES: dict[str, Recipe] = {
    "caddm": Recipe(caddm.CaddmObjective, caddm.augment_batch, _all_params, "adamw", caddm.LR, caddm.WEIGHT_DECAY,
                    caddm.GRAD_CLIP_VALUE, caddm.lr_factor),
    "sta": Recipe(sta.StaObjective, sta.augment_batch, sta.select_trainable, "adam", sta.LR, sta.WEIGHT_DECAY,
                  None, lambda step, total: 1.0),
}


@dataclass(frozen=True)
class FinetuneOptions:
    """How the run proceeds (see the module docstring)."""

    out: Path
    detector: str = "caddm"
    steps: int = 200
    batch_size: int = 8
    lr: float | None = None  # default: the recipe's
    val_fraction: float = 0.2
    val_every: int = 50
    checkpoint_every: int = 50
    seed: int = 0
    resume: bool = False
    stop_at: int | None = None  # checkpoint and return at this step (time-sliced runs); resume later
    augment: bool = True  # False: the crops as the live path makes them (overfitting checks)
    amp: bool = True  # CUDA only
    progress: bool = True


@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    val: list[list[float]] = field(default_factory=list)  # [step, video AUC]


def _meta(cfg: Config, opts: FinetuneOptions) -> dict[str, Any]:
    d = opts.detector
    return {"detector": d, "model": model_name(d, cfg.detectors),
            "overrides": json.dumps(cfg.detectors.detector(d).overrides, sort_keys=True)}


def _checkpoint_dir(out: Path) -> Path:
    return out / "checkpoint"


def save_checkpoint(out: Path, model: nn.Module, step: int, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    history: History, meta: Mapping[str, Any]) -> None:
    """Write ``OUT/checkpoint/{model.safetensors,state.pt}`` (each through a temporary name)."""
    ckpt = _checkpoint_dir(out)
    ckpt.mkdir(parents=True, exist_ok=True)
    save_safetensors(model, ckpt / "model.tmp.safetensors", metadata={**meta, "step": str(step)})
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "history": {"loss": history.loss, "val": history.val}, "meta": dict(meta)}
    torch.save(state, ckpt / "state.tmp.pt")
    os.replace(ckpt / "model.tmp.safetensors", ckpt / "model.safetensors")
    os.replace(ckpt / "state.tmp.pt", ckpt / "state.pt")


def load_state(out: Path, meta: Mapping[str, Any]) -> dict[str, Any]:
    """``state.pt`` of ``OUT/checkpoint`` (weights-only), checked against this run's ``meta``
    and the model file's step; :class:`FinetuneError` otherwise."""
    ckpt = _checkpoint_dir(out)
    if not (ckpt / "state.pt").is_file() or not (ckpt / "model.safetensors").is_file():
        raise FinetuneError(f"--resume: no checkpoint in {ckpt} (model.safetensors and state.pt)")
    state: dict[str, Any] = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    for key, value in meta.items():
        if state["meta"].get(key) != value:
            raise FinetuneError(f"--resume: {ckpt} was trained with {key} {state['meta'].get(key)!r}, this run "
                                f"has {value!r}; use another --out or the same configuration")
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as fh:
        model_step = int(fh.metadata().get("step", -1))
    if model_step != int(state["step"]):
        raise FinetuneError(f"--resume: {ckpt}: model is at step {model_step}, state at {state['step']} "
                            "(interrupted while saving); delete the folder and start again")
    return state


def _build_model(cfg: Config, opts: FinetuneOptions, resume_from: Path | None) -> nn.Module:
    d = opts.detector
    dcfg = cfg.detectors
    name = model_name(d, dcfg)
    overrides = dcfg.detector(d).overrides
    if resume_from is not None:
        return models.create_model(name, checkpoint=str(resume_from), **overrides)
    if dcfg.random_weights:
        torch.manual_seed(opts.seed)
        return models.create_model(name, **overrides)
    weights = resolve(d, dcfg)  # WeightsError: names the missing files
    return models.create_model(name, checkpoint=weights.checkpoint, **overrides)


def _batch(pools: Sequence[Sequence[VideoCrops]], size: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[int]]:
    crops, labels = [], []
    for _ in range(size):
        label = int(rng.integers(2))
        video = pools[label][int(rng.integers(len(pools[label])))]
        crops.append(np.asarray(video.crops[int(rng.integers(len(video.crops)))]))
        labels.append(label)
    return crops, labels


def _autocast(device: torch.device, amp: bool) -> contextlib.AbstractContextManager[Any]:
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def validate(model: nn.Module, videos: Sequence[VideoCrops], preprocess: Callable[[torch.Tensor], torch.Tensor],
             device: torch.device, batch_size: int, amp: bool) -> dict[str, float | int]:
    """Video-level metrics on ``videos`` (those with crops): mean probability per video."""
    model.eval()
    labels, scores = [], []
    for v in videos:
        if len(v.crops) == 0:
            continue
        probs = []
        for start in range(0, len(v.crops), batch_size):
            x = preprocess(torch.from_numpy(np.array(v.crops[start:start + batch_size]))).to(device)
            with _autocast(device, amp):
                probs.append(model(x).float().cpu())
        labels.append(v.label)
        scores.append(float(torch.cat(probs).mean()))
    return binary_metrics(labels, scores, 0.5)


def _eval_config(cfg: Config, detector: str, weights: Path) -> dict[str, Any]:
    """The sections ``eval`` needs to score the fine-tuned model (see the module docstring)."""
    dump = cfg.model_dump(mode="json")
    dets = dump["detectors"]
    dets.update({"enabled": [detector], "random_weights": False, "calibration": None})
    dets[detector]["checkpoint"] = str(weights.resolve())
    return {"detectors": dets, "faces": dump["faces"], "ingest": dump["ingest"]}


def _split_doc(samples: Sequence[Sample], crops: Sequence[VideoCrops]) -> list[dict[str, Any]]:
    return [{"video": s.video, "label": s.label, "crops": int(len(c.crops))} for s, c in zip(samples, crops)]


def _write_csv(path: Path, samples: Sequence[Sample]) -> None:
    """The held-out videos as eval's ``csv`` layout (absolute paths): ``eval OUT/val.csv``."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "group"])
        writer.writerows([str(s.path.resolve()), s.label, s.group or ""] for s in samples)


def finetune(cfg: Config, dataset: Dataset, opts: FinetuneOptions) -> dict[str, Any]:
    """Train ``opts.detector`` on ``dataset`` (see the module docstring); returns the
    ``finetune.json`` document. Raises ``DatasetError`` (split), ``WeightsError`` (start
    weights), :class:`FinetuneError` (detector, crops, resume)."""
    recipe = RECIPES.get(opts.detector)
    if recipe is None:
        raise FinetuneError(f"--detector {opts.detector!r}: finetune trains {', '.join(sorted(RECIPES))}")
    if opts.steps < 1 or opts.batch_size < 1:
        raise FinetuneError("--steps and --batch-size must be at least 1")
    if opts.stop_at is not None and opts.stop_at < 1:
        raise FinetuneError("--stop-at must be at least 1")
    train_samples, val_samples = split_by_identity(dataset, opts.val_fraction, opts.seed)
    meta = _meta(cfg, opts)
    state = load_state(opts.out, meta) if opts.resume else None
    if state is None and (_checkpoint_dir(opts.out) / "state.pt").is_file():
        log.warning("%s holds a checkpoint; starting over (--resume continues it)", _checkpoint_dir(opts.out))
    ckpt_model = _checkpoint_dir(opts.out) / "model.safetensors"
    model = _build_model(cfg, opts, ckpt_model if state is not None else None)
    card = model.card
    assert isinstance(card, models.ModelCard)
    opts.out.mkdir(parents=True, exist_ok=True)
    train = extract_crops(cfg, opts.detector, train_samples, opts.out, opts.progress)
    val = extract_crops(cfg, opts.detector, val_samples, opts.out, opts.progress)
    pools = [[v for v in train if v.label == label and len(v.crops)] for label in (0, 1)]
    for label, pool in enumerate(pools):
        if not pool:
            raise FinetuneError(f"no face crops in any {'fake' if label else 'real'} training video "
                                f"({opts.detector} sampling, faces.min_size {cfg.faces.min_size}); nothing to train on")

    device = resolve_device(cfg.detectors.device)
    amp = opts.amp and device.type == "cuda"
    model.to(device)
    params = recipe.trainable(model)
    lr = opts.lr if opts.lr is not None else recipe.lr
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=lr, weight_decay=recipe.weight_decay)
    total = opts.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: recipe.lr_factor(s, total))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    history = History()
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step = int(state["step"])
        history = History(list(state["history"]["loss"]), [list(v) for v in state["history"]["val"]])
        log.info("resuming at step %d of %d from %s", step, total, _checkpoint_dir(opts.out))
    objective = recipe.objective()

    def preprocess(batch: torch.Tensor) -> torch.Tensor:
        return card.preprocess(batch)

    final: dict[str, float | int] | None = None

    def run_validation() -> float:
        nonlocal final
        if not val:
            return math.nan
        final = validate(model, val, preprocess, device, opts.batch_size, amp)
        auc = float(final["auc"])
        history.val.append([float(step), auc])
        return auc

    from tqdm import tqdm

    bar = tqdm(total=total, initial=step, unit="step", desc=f"finetune {opts.detector}", file=sys.stderr,
               disable=not opts.progress, mininterval=0.5, dynamic_ncols=True)
    last_auc = history.val[-1][1] if history.val else math.nan
    try:
        end = total if opts.stop_at is None else min(total, opts.stop_at)
        while step < end:
            rng = np.random.default_rng([opts.seed, step])
            torch.manual_seed(opts.seed * 1_000_003 + step)
            crops, labels = _batch(pools, opts.batch_size, rng)
            batch = recipe.augment(crops, rng) if opts.augment else np.stack(crops)
            x = preprocess(torch.from_numpy(batch)).to(device)
            y = torch.tensor(labels, dtype=torch.long, device=device)
            model.train()
            with _autocast(device, amp):
                loss, _parts = objective(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.grad_clip_value is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_value_(params, recipe.grad_clip_value)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            history.loss.append(float(loss.detach()))
            step += 1
            if step % opts.val_every == 0 or step == total:
                last_auc = run_validation()
            if step % opts.checkpoint_every == 0 or step == end:
                save_checkpoint(opts.out, model, step, optimizer, scheduler, scaler, history, meta)
            recent = history.loss[-10:]
            shown = "-" if math.isnan(last_auc) else f"{last_auc:.3f}"  # "-": not validated yet (or no split)
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", val_auc=shown, refresh=False)
            bar.update(1)
    finally:
        bar.close()

    if step < total:
        log.info("stopped at step %d of %d; checkpoint in %s (continue with --resume)", step, total,
                 _checkpoint_dir(opts.out))
        return {"detector": opts.detector, "steps": step, "stopped": True, "loss": history.loss,
                "val_auc": history.val}
    if val and final is None:  # resumed at the last step: the history's AUC, measured again
        run_validation()
    model.eval()
    weights = opts.out / f"{meta['model']}.safetensors"
    sha = save_safetensors(model, weights, metadata={**meta, "step": str(step), "finetuned": "stream-monitor finetune"})
    (opts.out / "config.yaml").write_text(yaml.safe_dump(_eval_config(cfg, opts.detector, weights), sort_keys=False),
                                          encoding="utf-8")
    doc: dict[str, Any] = {
        "detector": opts.detector, "model": meta["model"], "overrides": json.loads(meta["overrides"]),
        "weights": str(weights), "sha256": sha, "steps": step, "batch_size": opts.batch_size, "lr": lr,
        "seed": opts.seed, "device": str(device), "amp": amp, "augment": opts.augment,
        "train": _split_doc(train_samples, train), "val": _split_doc(val_samples, val),
        "loss": history.loss, "val_auc": history.val, "final_val": final,
    }
    if val_samples:
        _write_csv(opts.out / "val.csv", val_samples)
    (opts.out / "finetune.json").write_text(json.dumps(doc, indent=1, default=float), encoding="utf-8")
    return doc
