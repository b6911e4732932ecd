"""Where each detector's checkpoint files are, and what to say when they are not there.

Resolution for a detector (``caddm``, ``sta``, ``styleflow``) with model name ``M``:

1. ``detectors.<d>.checkpoint`` from the config: a path (relative to ``weights_dir``
   unless absolute) or, for ``styleflow``, a mapping ``{psp_encoder, stylegru, content}``;
2. else ``<weights_dir>/<M>.safetensors`` (what ``weights import`` writes);
3. else the authors' file names from the model card, in ``weights_dir``.

Missing files raise :class:`WeightsError` naming every file and where it comes from
(the cards' ``CheckpointSpec.source``); the CLI turns that into exit code 2.
"""

from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import models
from models.card import ModelCard

from .config import DEFAULT_MODELS, DETECTOR_NAMES, DetectorConfig, DetectorsConfig
from .errors import WeightsError
from .weights_manifest import Manifest, check_recorded
from .weights_sources import lookup


@dataclass(frozen=True)
class ResolvedWeights:
    """The checkpoint argument for ``models.create_model`` and the files behind it."""

    detector: str
    model: str
    checkpoint: str | dict[str, str]
    files: tuple[str, ...]


def model_name(detector: str, cfg: DetectorsConfig) -> str:
    return cfg.detector(detector).model or DEFAULT_MODELS[detector]


@functools.lru_cache(maxsize=None)
def card_of(name: str) -> ModelCard:
    """The model card of a registered model, without allocating its weights (cached: building
    a full-size model on ``meta`` still takes a while, and cards do not change)."""
    card = models.create_model(name, device="meta").card
    assert isinstance(card, ModelCard)
    return card


def _authors_file(weights_dir: Path, filename: str) -> Path | None:
    if "<" in filename:  # a pattern such as StyleGRU's checkpoint_<epoch>: take the newest match
        pattern = filename.split("<", 1)[0] + "*"
        matches = sorted(glob.glob(str(weights_dir / pattern)), key=lambda p: Path(p).stat().st_mtime)
        return Path(matches[-1]) if matches else None
    path = weights_dir / filename
    return path if path.is_file() else None


def _part_file(root: Path, card: ModelCard, part: str, filename: str) -> Path | None:
    """A converted part (``<model>_<part>.safetensors``) or the authors' file for a part."""
    if len(card.checkpoints) > 1:
        converted = root / f"{card.name}_{part}.safetensors"
        if converted.is_file():
            return converted
    return _authors_file(root, filename)


def resolve(detector: str, cfg: DetectorsConfig) -> ResolvedWeights:
    """Find the files for ``detector`` or raise :class:`WeightsError` saying what is missing."""
    name = model_name(detector, cfg)
    root = cfg.weights_dir
    explicit = cfg.detector(detector).checkpoint
    if isinstance(explicit, Mapping):
        paths = {part: str(p if Path(p).is_absolute() else root / p) for part, p in explicit.items()}
        missing = [p for p in paths.values() if not Path(p).is_file()]
        if missing:
            raise WeightsError(f"{detector}: checkpoint files not found: {', '.join(missing)}")
        return ResolvedWeights(detector, name, paths, tuple(paths.values()))
    if isinstance(explicit, str):
        path = Path(explicit) if Path(explicit).is_absolute() else root / explicit
        if not path.is_file():
            raise WeightsError(f"{detector}: checkpoint file not found: {path}")
        return ResolvedWeights(detector, name, str(path), (str(path),))
    converted = root / f"{name}.safetensors"
    if converted.is_file():
        return ResolvedWeights(detector, name, str(converted), (str(converted),))
    card = card_of(name)
    found: dict[str, str] = {}
    lacking: list[str] = []
    for spec in card.checkpoints:
        part = _part_file(root, card, spec.part, spec.filename)
        if part is None:
            lacking.append(f"  {root / spec.filename}  ({spec.part}; from {spec.source}; licence: {spec.licence})")
        else:
            found[spec.part] = str(part)
    if lacking:
        raise WeightsError(f"{detector} ({name}) needs checkpoint files that are not in {root}:\n" + "\n".join(lacking)
                           + f"\nor a converted {converted.name}. See weights/README.md; "
                             "use --random-weights to run untrained detectors for plumbing checks.")
    if len(found) == 1 and "model" in found:
        return ResolvedWeights(detector, name, found["model"], (found["model"],))
    return ResolvedWeights(detector, name, found, tuple(found.values()))


def resolve_all(cfg: DetectorsConfig) -> dict[str, ResolvedWeights]:
    """Resolve every enabled detector; one :class:`WeightsError` listing all problems."""
    out: dict[str, ResolvedWeights] = {}
    problems: list[str] = []
    for detector in cfg.enabled:
        try:
            out[detector] = resolve(detector, cfg)
        except WeightsError as exc:
            problems.append(str(exc))
    if problems:
        raise WeightsError("\n".join(problems))
    return out


def variants(detector: str) -> list[str]:
    """The registered models a detector can run (``detectors.<d>.model``), in registry order:
    the models of its family that are not one part of a composite (StyleFlow's pSp encoder)."""
    out = []
    for name in models.list_models():
        card = card_of(name)
        if card.family == detector and (len(card.checkpoints) > 1 or card.checkpoints[0].part == "model"):
            out.append(name)
    return out


def _present(root: Path, name: str) -> bool:
    """Whether any file of model ``name`` (converted or the authors') is in ``root``."""
    if (root / f"{name}.safetensors").is_file():
        return True
    card = card_of(name)
    return any(_part_file(root, card, spec.part, spec.filename) is not None for spec in card.checkpoints)


def describe(weights_dir: Path, cfg: DetectorsConfig | None = None) -> list[str]:
    """Human-readable lines: every registered variant of each detector, its files, present or
    not, and where they come from; ``[configured]`` marks the model ``cfg`` runs."""
    cfg = cfg or DetectorsConfig()
    lines = []
    for detector, name in ((d, v) for d in DETECTOR_NAMES for v in variants(d)):
        card = card_of(name)
        converted = weights_dir / f"{name}.safetensors"
        mark = "  [configured]" if model_name(detector, cfg) == name else ""
        lines.append(f"{detector} ({name}){mark}"
                     f"{'  [converted: ' + str(converted) + ']' if converted.is_file() else ''}")
        for spec in card.checkpoints:
            path = _part_file(weights_dir, card, spec.part, spec.filename)
            state = f"present: {path}" if path else "missing"
            lines.append(f"  {spec.part:<12} {spec.filename:<24} {state}")
            lines.append(f"  {'':<12} source: {spec.source}")
            lines.append(f"  {'':<12} licence: {spec.licence}")
            fetch_name = name if spec.part == "model" else f"{name}_{spec.part}"
            source = lookup(fetch_name)
            if source is not None:
                accept = " --accept-licence" if source.non_commercial else ""
                lines.append(f"  {'':<12} fetch: stream-monitor weights fetch {fetch_name}{accept}")
    return lines


def check_file(file: Path, candidates: Sequence[str]) -> str:
    """The first of ``candidates`` (model names) that ``file`` fits, by the check ``import``
    and ``verify`` make: one safe read (safetensors or ``weights_only``; a pickle that needs
    code is refused before anything in it runs), then a strict load into each candidate
    built on ``meta`` (no memory). Raises :class:`WeightsError` with the loader's message:
    unsafe or unreadable, or each candidate's layout report when it fits none."""
    try:
        raw = models.read_checkpoint(file)
    except models.CheckpointError as exc:
        raise WeightsError(str(exc)) from None
    reports = []
    for model in candidates:
        try:
            models.create_model(model, checkpoint=raw, device="meta")
        except models.CheckpointError as exc:
            reports.append(f"{model}: {exc}")
            continue
        return model
    raise WeightsError(f"{file} does not fit {' or '.join(candidates)}: " + " | ".join(reports))


def verify(weights_dir: Path, detectors: list[str], base: DetectorsConfig | None = None) -> list[tuple[str, bool]]:
    """For each detector: resolve the files of the model ``base`` configures (present or not),
    hash them, and load them strictly on ``meta``; then the same for every other registered
    variant of it with a file in ``weights_dir`` (lines ``detector/model: ...``). A file
    recorded in the fetch manifest must still have its recorded sha256."""
    out = []
    base = base or DetectorsConfig()
    cfg = base.model_copy(update={"weights_dir": weights_dir, "enabled": detectors})
    try:
        manifest: Manifest | None = Manifest.load(weights_dir)
    except WeightsError as exc:
        out.append((f"manifest: FAILED: {exc}", False))
        manifest = None
    checks = [(detector, detector, cfg) for detector in detectors]
    for detector in detectors:
        for other in variants(detector):
            if other != model_name(detector, cfg) and _present(weights_dir, other):
                plain = base.model_copy(update={
                    "weights_dir": weights_dir, detector: DetectorConfig(model=other)})
                checks.append((f"{detector}/{other}", detector, plain))
    for label, detector, cfg in checks:
        try:
            found = resolve(detector, cfg)
            models.create_model(found.model, checkpoint=found.checkpoint, device="meta")
        except (WeightsError, models.CheckpointError) as exc:
            out.append((f"{label}: FAILED: {exc}", False))
            continue
        digests = {f: models.sha256_file(f) for f in found.files}
        changed = [m for f, d in digests.items() if manifest and (m := check_recorded(Path(f), manifest, d))]
        if changed:
            out.append((f"{label}: FAILED: {'; '.join(changed)}", False))
            continue
        hashes = ", ".join(f"{Path(f).name} sha256 {d}" for f, d in digests.items())
        out.append((f"{label}: ok ({found.model}): {hashes}", True))
    return out


def import_checkpoint(file: Path, target: str, weights_dir: Path,
                      on_step: Callable[[], object] | None = None) -> tuple[Path, str]:
    """Convert ``file`` (authors' layout or safetensors) for ``target`` — a detector
    (``caddm``/``sta``/``styleflow``) or a registered model name such as
    ``styleflow_stylegru`` — into ``<weights_dir>/<model>.safetensors``; returns it and its sha256.
    The file appears whole (written beside it, then renamed) with mode 0644 whatever the umask,
    so a container's unprivileged user can read what root imported. ``on_step``: called after
    the check-and-convert and after the write (a progress bar of 2 steps). Raises
    :class:`WeightsError` for a file that is not a fitting checkpoint, ``OSError`` when the
    directory cannot be written."""
    name = DEFAULT_MODELS.get(target, target)
    if not models.is_model(name):
        raise WeightsError(f"unknown detector or model {target!r}; known: {', '.join(models.list_models())}")
    if not file.is_file():
        raise WeightsError(f"{file}: no such file")
    dst = weights_dir / f"{name}.safetensors"
    weights_dir.mkdir(parents=True, exist_ok=True)
    tmp = weights_dir / f".{name}.safetensors.part"
    try:
        digest = models.convert_checkpoint(name, file, tmp)
        if on_step is not None:
            on_step()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except models.CheckpointError as exc:
        raise WeightsError(str(exc)) from exc
    finally:
        tmp.unlink(missing_ok=True)
    if on_step is not None:
        on_step()
    return dst, digest
