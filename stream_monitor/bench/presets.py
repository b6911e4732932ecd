"""Named detector size presets for the bench: the config overrides of ``detectors.*``.

``full`` is the authors' architectures as registered (no overrides). ``small`` is the
same code at tiny widths — the configuration the service tests use (kept in step with
``tests/support/small.py``, which the package cannot import): input sizes stay the
cards' (224/256 crops, 8/32-frame clips), so sampling, alignment and preprocessing run
exactly as at full size and only the model compute shrinks. Use it to check that the
bench runs, not to measure the detectors.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

Preset = Literal["small", "full"]

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "small": {
        "caddm": {"model": "caddm_resnet34", "overrides": {"layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64]}},
        "sta": {"overrides": {"width": 32, "layers": 1, "heads": 2, "adapter_width": 16}},
        "styleflow": {"overrides": {
            "psp": {"units": [1, 1, 1, 1], "widths": [16, 16, 16, 16], "n_styles": 4, "style_dim": 8,
                    "input_size": 256},
            "stylegru": {"steps": 31, "input_size": 32, "hidden_size": 256, "res_hidden": 32},
            "content": {"width": 4, "clip_len": 32, "input_size": 224, "tte_heads": 2, "tte_dim_head": 8,
                        "tte_mlp_dim": 32},
        }},
    },
}


def preset_detectors(preset: str, detectors: list[str]) -> dict[str, dict[str, Any]]:
    """``detectors.<name>`` config sections of ``preset`` for the enabled ``detectors``
    (deep copies: callers may merge into them)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    table = PRESETS[preset]
    return {d: copy.deepcopy(table[d]) for d in detectors if d in table}
