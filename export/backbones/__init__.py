"""The backbones the exporter knows, one file each, registered by name (backbones.get("alexnet")).

Every module of this package except ``base`` and ``registry`` is a backbone file: it describes
its backbone with a ``Backbone`` (base.py) and calls ``register`` on it. The files are found and
imported here, so adding a backbone is adding its file (docs/adding-a-model.md). Importing this
package needs numpy only; torch is imported when a backbone builds its network or graph.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import Backbone, FeatureNode, ImageClassificationPreprocessing
from .registry import checked_weights, get, names, register

__all__ = ["Backbone", "FeatureNode", "ImageClassificationPreprocessing", "checked_weights", "get", "names",
           "register"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")
