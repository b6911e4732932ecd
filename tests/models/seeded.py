"""Deterministic, well-scaled random weights keyed by parameter name.

Golden parity data is produced by filling the authors' modules and ours with the same
values: each tensor comes from a generator seeded by ``(seed, key)``, so the value of a key
does not depend on which other keys exist or in which order modules were built. The
scales keep activations in range through deep stacks, so probabilities stay away from
0 and 1 and a parity check compares something.

``tools/parity/*`` (golden generation, outside the test suite) and the tests both use
this module; it depends only on torch.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open
from torch import nn

_NORM_HINTS = ("bn", "norm", "ln", ".bn", "batchnorm")


def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2 ** 62))


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The value ``key`` gets under ``seed`` (see module docstring for the scales)."""
    g = _generator(seed, key)
    leaf = key.rsplit(".", 1)[-1]
    lower = key.lower()
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf == "running_var":
        return (torch.rand(shape, generator=g) * 0.5 + 0.75).to(dtype)
    if leaf == "running_mean":
        return (torch.randn(shape, generator=g) * 0.05).to(dtype)
    if len(shape) == 1 and leaf == "weight" and any(h in lower for h in _NORM_HINTS):
        return (1.0 + 0.05 * torch.randn(shape, generator=g)).to(dtype)
    if leaf == "bias" or len(shape) <= 1:
        return (0.02 * torch.randn(shape, generator=g)).to(dtype)
    fan_in = math.prod(shape[1:])
    return (torch.randn(shape, generator=g) / math.sqrt(max(fan_in, 1))).to(dtype)


def seeded_state(shapes: Mapping[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A full state dict for the given key → shape table."""
    return {k: seeded_tensor(k, tuple(s), seed) for k, s in shapes.items()}


def fill_seeded(model: nn.Module, seed: int = 0, rename: Mapping[str, str] | None = None) -> nn.Module:
    """Fill every parameter and buffer of ``model`` in place.

    ``rename`` maps the module's own key to the canonical key whose value it should get
    (for modules whose names differ from ours); unmapped keys are used as they are.
    """
    rename = rename or {}
    own = model.state_dict()
    state = {k: seeded_tensor(rename.get(k, k), tuple(v.shape), seed, v.dtype if v.is_floating_point() else torch.float32)
             for k, v in own.items()}
    for k, v in own.items():
        if not v.is_floating_point():
            state[k] = torch.zeros_like(v)
    model.load_state_dict(state, strict=True)
    return model


def golden_metadata(path: Path) -> dict[str, str]:
    """The metadata a parity tool wrote into a golden safetensors file (overrides, seed, ...)."""
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata())
