"""Name → entry-point registry for the detector families (timm-style).

Each family module decorates its entry points with :func:`register_model`. An entry
point is ``fn(**overrides) -> nn.Module``; the model it returns carries its
:class:`~models.card.ModelCard` as ``model.card`` and its family's
``checkpoint_filter_fn`` as ``model.checkpoint_filter_fn``.

The table is filled explicitly by importing the family modules in ``models/__init__``
(no package scanning), so the set of names is fixed and greppable.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

EntryPoint = Callable[..., nn.Module]
_F = TypeVar("_F", bound=EntryPoint)

_ENTRY_POINTS: dict[str, EntryPoint] = {}


def register_model(fn: _F) -> _F:
    """Register ``fn`` under its ``__name__``; a second registration of a name is a bug."""
    name = fn.__name__
    if name in _ENTRY_POINTS:
        raise ValueError(f"model {name!r} is registered twice")
    _ENTRY_POINTS[name] = fn
    return fn


def list_models() -> list[str]:
    """Sorted names of every registered model."""
    return sorted(_ENTRY_POINTS)


def is_model(name: str) -> bool:
    return name in _ENTRY_POINTS


def model_entrypoint(name: str) -> EntryPoint:
    """The entry point for ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return _ENTRY_POINTS[name]
    except KeyError:
        known = ", ".join(list_models())
        raise KeyError(f"unknown model {name!r}; registered models: {known}") from None
