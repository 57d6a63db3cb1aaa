"""The registry of backbones: each file of backbones/ registers its own, checked against
models_manifest.json when it registers."""
from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from nest_rt import catalog

from ..errors import ExportError
from .base import Backbone

_REGISTERED: dict[str, Backbone] = {}
B = TypeVar("B", bound=Backbone)


def register(backbone: B) -> B:
    """Add ``backbone`` to the registry; refuses a name registered twice or one that
    models_manifest.json does not list with the same feature count."""
    listed = catalog.backbones()
    if backbone.name not in listed:
        raise ValueError(f"backbone {backbone.name!r} is not in models_manifest.json's backbones {sorted(listed)}")
    if listed[backbone.name].features != backbone.features:
        raise ValueError(f"backbone {backbone.name!r}: its nodes give {backbone.features} features, "
                         f"models_manifest.json says {listed[backbone.name].features}")
    if backbone.name in _REGISTERED:
        raise ValueError(f"backbone {backbone.name!r} is registered twice")
    _REGISTERED[backbone.name] = backbone
    return backbone


def get(name: str) -> Backbone:
    if name not in _REGISTERED:
        raise ExportError(f"no exporter for backbone {name!r}")
    return _REGISTERED[name]


def names() -> list[str]:
    """Every registered backbone's name, in the order of their files."""
    return list(_REGISTERED)


def checked_weights(weights: dict[str, str | Path | None]) -> dict[str, str | Path | None]:
    """``weights`` (backbone name -> state dict path) checked: every name a registered backbone
    that takes a weights file."""
    for name in weights:
        if name not in _REGISTERED:
            raise ExportError(f"--weights {name}=...: no backbone {name!r}; known: {', '.join(names())}")
        if not _REGISTERED[name].takes_weights and weights[name] is not None:
            raise ExportError(f"--weights {name}=...: the {_REGISTERED[name].title} backbone takes no weights file "
                              "(its weights are built, see bundle.json's provenance)")
    return dict(weights)
