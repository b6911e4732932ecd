"""Safe, loud checkpoint loading; conversion to safetensors; sha256 verification.

Safety: a checkpoint is read either with ``safetensors`` or with
``torch.load(..., weights_only=True)``. A pickle that needs arbitrary objects (code) is
refused with :class:`CheckpointError` before anything in it runs; the message says how to
convert it in a trusted environment.

Loudness: loading is strict by default. Every missing key, unexpected key and shape
mismatch goes into a :class:`LoadReport`; a strict load raises with that report.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[Mapping[str, Any], nn.Module], StateDict]

_SAFETENSORS_SUFFIXES = (".safetensors",)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read, is unsafe, or does not fit the model."""


@dataclass
class LoadReport:
    """What a load found: keys the model lacks, keys the file lacks, and shape clashes.

    ``mismatched`` holds ``(key, shape in model, shape in checkpoint)``. ``ignored``: keys
    of the file that a model knows and deliberately does not load, because the authors'
    own code does not use them (e.g. ``styleflow_truemedia`` and the style attention of a
    stage-2 file); they do not make a load fail.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def show(keys: list[str]) -> str:
            head = ", ".join(keys[:8])
            return head + (f", … ({len(keys) - 8} more)" if len(keys) > 8 else "")

        lines = [f"{self.loaded} tensors loaded"]
        if self.missing:
            lines.append(f"{len(self.missing)} missing keys (in the model, not in the file): {show(self.missing)}")
        if self.unexpected:
            lines.append(f"{len(self.unexpected)} unexpected keys (in the file, not in the model): {show(self.unexpected)}")
        if self.mismatched:
            clashes = [f"{k} model {tuple(a)} vs file {tuple(b)}" for k, a, b in self.mismatched]
            lines.append(f"{len(clashes)} shape mismatches: {show(clashes)}")
        if self.ignored:
            lines.append(f"{len(self.ignored)} ignored keys (in the file, unused by the authors' code): "
                         f"{show(self.ignored)}")
        return "; ".join(lines)


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> str:
    """Check a file against a known sha256 (a prefix of at least 8 hex digits is accepted).

    Returns the full digest; raises :class:`CheckpointError` on a mismatch.
    """
    if len(expected) < 8:
        raise ValueError("an expected sha256 needs at least 8 hex digits")
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise CheckpointError(f"{path}: sha256 {actual} does not match the expected {expected}; "
                              "the file is corrupt, truncated or a different release")
    return actual


def _unsafe_pickle_message(path: Path, reason: str) -> str:
    return (
        f"{path}: refused to load: this checkpoint needs arbitrary unpickling, which can run code "
        f"({reason.splitlines()[0][:300]}). Convert it in a trusted environment (a throw-away "
        "container, never on the monitor host): open it there with torch's full unpickler, keep only "
        "the tensors of its state dict, and save them with safetensors (weights/README.md, 'Safety'); "
        "then: stream-monitor weights import OUT.safetensors --detector NAME"
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file without executing code.

    ``*.safetensors`` files go through safetensors; everything else through
    ``torch.load(map_location="cpu", weights_only=True)`` (memory-mapped when the file is
    a zip archive, so a 3 GB StyleGRU checkpoint is not copied twice).

    Returns the top-level object, which must be a dict (a state dict or a wrapper such as
    ``{'network': ...}``). Raises :class:`CheckpointError` when the file is missing,
    unreadable, unsafe, or not a dict.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    if p.suffix in _SAFETENSORS_SUFFIXES:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(p))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unsafe_pickle_message(p, str(exc))) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(_unsafe_pickle_message(p, str(exc))) from exc
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:  # noqa: BLE001 - torch's legacy reader fails on arbitrary bytes with KeyError, IndexError, ...
        raise CheckpointError(f"{p}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict (state dict or wrapper), found {type(obj).__name__}")
    return obj


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Remove ``prefix`` from every key that has it (e.g. DataParallel's ``module.``)."""
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def only_tensors(state: Mapping[str, Any]) -> StateDict:
    """Keep the tensor values of a mapping (drops counters, option dicts, etc.)."""
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def compare_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> LoadReport:
    """Compare ``state`` with the model's own ``state_dict()`` keys and shapes."""
    own = model.state_dict()
    report = LoadReport()
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    for k, v in state.items():
        if k in own and tuple(own[k].shape) != tuple(v.shape):
            report.mismatched.append((k, tuple(own[k].shape), tuple(v.shape)))
    return report


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, strict: bool = True,
               source: str = "state dict") -> LoadReport:
    """Load canonical-key ``state`` into ``model``.

    Strict (default): any missing/unexpected key or shape mismatch raises
    :class:`CheckpointError` with the full report and leaves the model untouched.
    Non-strict: loads what fits and returns the report for the caller to log.
    A model on the ``meta`` device receives the tensors by assignment.
    """
    report = compare_state(model, state)
    if strict and not report.ok:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: {report}")
    bad = {k for k, _, _ in report.mismatched}
    fitting = {k: v for k, v in state.items() if k not in bad and k not in report.unexpected}
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(fitting, strict=False, assign=on_meta)
    report.loaded = len(fitting)
    return report


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike[str] | Mapping[str, Any], *,
                    strict: bool = True, filter_fn: FilterFn | None = None) -> LoadReport:
    """Read (safely), remap to canonical keys and load a checkpoint into ``model``.

    ``filter_fn`` defaults to the model's own ``checkpoint_filter_fn`` attribute, which
    accepts the authors' layouts as well as our canonical safetensors layout.
    """
    if isinstance(checkpoint, Mapping):
        raw, source = dict(checkpoint), "state dict"
    else:
        raw, source = read_checkpoint(checkpoint), str(checkpoint)
    fn = filter_fn if filter_fn is not None else getattr(model, "checkpoint_filter_fn", None)
    try:
        state = fn(raw, model) if fn is not None else only_tensors(raw)
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: layout not recognised for {type(model).__name__}: {exc}") from exc
    return load_state(model, state, strict=strict, source=source)


def save_safetensors(model: nn.Module, path: str | os.PathLike[str],
                     metadata: Mapping[str, str] | None = None) -> str:
    """Write the model's state dict under canonical keys to ``path``; return its sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", **dict(metadata or {})})
    return sha256_file(path)
