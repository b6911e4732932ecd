"""Small configurations of the real detectors for service tests (same code, tiny widths).

Input sizes stay those of the model cards (224/256 crops, 8/32-frame clips), so the
service's alignment, sampling and preprocessing run exactly as with full-size models.
"""

from __future__ import annotations

from typing import Any

SMALL_DETECTORS: dict[str, dict[str, Any]] = {
    "caddm": {"model": "caddm_resnet34", "overrides": {"layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64]}},
    "sta": {"overrides": {"width": 32, "layers": 1, "heads": 2, "adapter_width": 16}},
    "styleflow": {"overrides": {
        "psp": {"units": [1, 1, 1, 1], "widths": [16, 16, 16, 16], "n_styles": 4, "style_dim": 8, "input_size": 256},
        "stylegru": {"steps": 31, "input_size": 32, "hidden_size": 256, "res_hidden": 32},
        "content": {"width": 4, "clip_len": 32, "input_size": 224, "tte_heads": 2, "tte_dim_head": 8,
                    "tte_mlp_dim": 32},
    }},
}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def small_config(**sections: Any) -> dict[str, Any]:
    """Config overrides: random-weight small detectors on the CPU, deep-merged with ``sections``
    (so ``detectors={"sta": {"sample_fps": 4.0}}`` keeps StA's small model)."""
    base: dict[str, Any] = {"detectors": {"random_weights": True, "device": "cpu", **SMALL_DETECTORS}}
    return _merge(base, sections)
