"""The ``BERG`` class: current upstream's model-ID API (BERG, formerly NEST) over an exported bundle.

It is the ``NEST`` class's model-ID half under upstream's new name and signatures. Where
upstream has a bug, this does what upstream meant (each difference is listed in docs/parity.md):

- ``encode(..., return_metadata=True)`` always returns ``(responses, metadata)``; upstream
  printed a warning and returned the responses alone when the metadata could not be read;
- ``get_model_metadata`` lets a missing file raise a FileNotFoundError (ResponsesNotFoundError
  / BundleFileNotFoundError) instead of re-labelling every error InvalidParameterError;
- models work in ``with`` blocks (upstream's ``__exit__`` took no exception arguments).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import catalog
from .api import NEST
from .bundle import Bundle
from .errors import ParameterTypeError
from .models import EncodingModel


class BERG:
    """Encode images with BERG models exported by ``nest-rt export --berg-dir TOOLKIT``.

    ``BERG(bundle_dir)`` takes the exported bundle where upstream took ``berg_dir``; the other
    arguments are the NEST class's (``num_threads``, ``precision``).
    """

    def __init__(self, bundle_dir: str | Path | Bundle, num_threads: int | None = None, precision: str = "fp32"):
        self._nest = NEST(bundle_dir, num_threads=num_threads, precision=precision)
        self.bundle = self._nest.bundle

    def list_models(self, expand_brainscore_vision: bool = False, expand_brainscore_language: bool = False) -> list[str]:
        """Sorted ids of the models nest_rt serves. The Brain-Score gateways of upstream are not
        image encoders of the toolkit; the flags are accepted and change nothing."""
        for name, flag in (("expand_brainscore_vision", expand_brainscore_vision),
                           ("expand_brainscore_language", expand_brainscore_language)):
            if not isinstance(flag, bool):
                raise ParameterTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        return sorted(catalog.models())

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]]:
        return self._nest.get_model_catalog(print_format)

    def describe(self, model_id: str) -> dict[str, Any]:
        return self._nest.describe(model_id)

    def get_model_variants(self, model_id: str) -> list[str]:
        """A model's pretrained variants (MEG: its training splits); [] for the others."""
        described = catalog.model_entry(model_id).variants
        return list(described.values) if described else []

    def get_encoding_model(self, model_id: str, device: str = "auto", selection: dict | None = None,
                           **kwargs) -> EncodingModel:
        """``subject=`` (required), and ``train_split=`` / ``train_splits=`` for MEG."""
        return self._nest.get_encoding_model(model_id, device=device, selection=selection, **kwargs)

    def encode(self, model: EncodingModel, stimulus: Any, return_metadata: bool = False, **kwargs):
        """Responses (and, with ``return_metadata``, always the pair ``(responses, metadata)``).
        ``kwargs``: ``show_progress``, ``device``, ``center_crop``."""
        return self._nest.encode(model=model, stimulus=stimulus, return_metadata=return_metadata, **kwargs)

    def encode_many(self, models: list[EncodingModel], stimulus: Any, **kwargs) -> list:
        """Several models on the same images: each batch is decoded once and each backbone runs
        once per batch for all the models on it."""
        return self._nest.encode_many(models, stimulus, **kwargs)

    def get_model_metadata(self, model_id: str, **kwargs) -> dict[str, Any]:
        """``subject=`` (and ``roi=`` for the fwRF, ``train_split=`` for MEG)."""
        return self._nest.get_model_metadata(model_id, **kwargs)
