"""``create_model``: build a registered detector, optionally load a checkpoint into it."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import Any, Mapping, TypeVar

import torch
from torch import nn

from ._loading import LoadReport, load_checkpoint
from ._registry import model_entrypoint

_Cfg = TypeVar("_Cfg")

CheckpointArg = str | os.PathLike[str] | Mapping[str, Any] | None


def apply_overrides(default: _Cfg, overrides: Mapping[str, Any], what: str) -> _Cfg:
    """A family's frozen config dataclass with ``overrides`` applied (lists become tuples,
    so YAML/JSON values work); an unknown field is a ``TypeError`` naming the known ones."""
    known = {f.name for f in fields(default)}  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"{what}: unknown overrides {unknown}; known: {sorted(known)}")
    return replace(default, **{k: tuple(v) if isinstance(v, list) else v  # type: ignore[type-var]
                               for k, v in overrides.items()})


def create_model(name: str, checkpoint: CheckpointArg = None, *, strict: bool = True,
                 device: str | torch.device | None = None, **overrides: Any) -> nn.Module:
    """Build the model registered as ``name`` and return it in eval mode.

    ``overrides`` change the family's default config (e.g. ``depth=2, width=64`` for a
    small test configuration). ``device="meta"`` builds parameters without memory (for
    layout checks of full-size models); any other device moves the model after loading.
    ``checkpoint`` is a file path (the authors' layout or our safetensors), a state dict,
    or, for composite models such as ``styleflow``, a mapping from part name to path;
    a model that composes parts defines its own ``load_checkpoint``. The report of the
    load is kept as ``model.load_report``; strict loads raise ``CheckpointError`` on any
    missing, unexpected or mis-shaped key.
    """
    entry = model_entrypoint(name)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = entry(**overrides)
    else:
        model = entry(**overrides)
    report: LoadReport | None = None
    if checkpoint is not None:
        custom = getattr(model, "load_checkpoint", None)
        report = custom(checkpoint, strict=strict) if callable(custom) else \
            load_checkpoint(model, checkpoint, strict=strict)
    model.load_report = report  # type: ignore[assignment]
    if device is not None and torch.device(device).type != "meta":
        model = model.to(device)
    return model.eval()


def convert_checkpoint(name: str, src: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
                       dst: str | os.PathLike[str], *, strict: bool = True, **overrides: Any) -> str:
    """Convert an authors' checkpoint to safetensors under our canonical key names.

    ``src`` is a file, or for composite models a mapping from part name to file. The
    model is built on the ``meta`` device and receives the file's tensors by assignment,
    so no second full-size copy is allocated. The sources' sha256 go into the file's
    metadata. Returns the new file's sha256.
    """
    from ._loading import save_safetensors, sha256_file

    model = create_model(name, checkpoint=src, strict=strict, device="meta", **overrides)
    if isinstance(src, Mapping):
        sources = ",".join(f"{part}={sha256_file(path)}" for part, path in sorted(src.items()))
    else:
        sources = sha256_file(src)
    return save_safetensors(model, dst, metadata={"model": name, "source_sha256": sources})
