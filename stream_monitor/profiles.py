"""The CPU profile: what ``run``, ``serve`` and ``predict`` use on a machine without CUDA.

Full-size StA and StyleFlow windows take seconds to tens of seconds on a few CPU cores, so
a configuration that does not name its detectors (neither ``detectors.enabled`` in the file
nor ``--detectors``) and whose device is ``cpu``, or ``auto`` with no CUDA device, gets
:data:`CPU_PROFILE` underneath it: CADDM's ResNet-34 variant with ingest analysing at most
5 frames per second (the settings of ``deploy/demo-cpu.yaml``; a test keeps the two in
step). Anything the file or the flags set wins over the profile; naming detectors turns it
off. The caller logs :data:`PROFILE_NOTE` (once the configuration is valid).
"""

from __future__ import annotations

import copy
from typing import Any, Callable


PROFILE_NOTE = ("detectors run on the CPU (no CUDA device, or device: cpu): using the CPU profile (CADDM "
                "ResNet-34, at most 5 analysed frames per second); name detectors (--detectors or "
                "detectors.enabled) to override")

CPU_PROFILE: dict[str, Any] = {
    "ingest": {"max_fps": 5.0},
    "detectors": {"enabled": ["caddm"], "caddm": {"model": "caddm_resnet34"}},
}


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def cpu_profile(data: dict[str, Any], has_cuda: Callable[[], bool] = cuda_available) -> dict[str, Any] | None:
    """The profile to put under ``data`` (the file merged with the flags, before validation),
    or ``None`` when detectors are named, the device is ``cuda``, or ``auto`` finds CUDA."""
    detectors = data.get("detectors")
    detectors = detectors if isinstance(detectors, dict) else {}
    if "enabled" in detectors:
        return None
    device = detectors.get("device", "auto")
    if device not in ("cpu", "auto") or (device == "auto" and has_cuda()):
        return None
    return copy.deepcopy(CPU_PROFILE)
