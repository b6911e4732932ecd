"""stream-monitor's detector library: StyleFlow, StA and CADDM, faithful to their authors.

torch-only: nothing here imports the service (``stream_monitor``), asyncio, Redis or
Prometheus. Usage::

    import models
    models.list_models()
    m = models.create_model("sta_clip_vitl14", checkpoint="weights/sta_best.pth")
    x = m.card.preprocess(crops)      # uint8 RGB [N, 8, 224, 224, 3] -> [N, 8, 3, 224, 224]
    p_fake = m(x)                     # [N], in [0, 1]

Every model carries its :class:`~models.card.ModelCard` as ``model.card``.
"""

from ._factory import convert_checkpoint, create_model
from ._loading import CheckpointError, LoadReport, load_checkpoint, read_checkpoint, sha256_file, verify_sha256
from ._registry import is_model, list_models, register_model
from .card import AlignTemplate, CheckpointSpec, ModelCard

# The families register their entry points on import (explicit table, no scanning).
from . import caddm, sta, styleflow, styleflow_truemedia  # noqa: E402,F401  isort: skip

__all__ = [
    "AlignTemplate", "CheckpointError", "CheckpointSpec", "LoadReport", "ModelCard",
    "convert_checkpoint", "create_model", "is_model", "list_models", "load_checkpoint",
    "read_checkpoint", "register_model", "sha256_file", "verify_sha256",
]
