"""Queries over ``models_manifest.json``, the one catalog of NEST models.

The exporter and the runtime both read this file; nothing else in the code base lists
model ids, subjects or ROIs.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

from .errors import ModelNotFoundError, ParameterTypeError

MANIFEST_NAME = "models_manifest.json"


@functools.lru_cache(maxsize=1)
def load_manifest() -> dict[str, Any]:
    """The packaged models manifest (read once)."""
    text = resources.files(__package__).joinpath(MANIFEST_NAME).read_text(encoding="utf-8")
    return json.loads(text)


def models() -> dict[str, dict[str, Any]]:
    return load_manifest()["models"]


def model_entry(model_id: str) -> dict[str, Any]:
    require_str("model_id", model_id)
    entries = models()
    if model_id not in entries:
        raise ModelNotFoundError(
            f"model_id {model_id!r} is not a NEST model; valid model ids: {sorted(entries)}")
    return entries[model_id]


def require_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ParameterTypeError(f"{name} must be a str, got {type(value).__name__} ({value!r})")


def require_choice(name: str, value: Any, valid: list) -> None:
    """Raise ModelNotFoundError (a ValueError) naming the argument and listing valid values."""
    if value not in valid:
        raise ModelNotFoundError(f"{name}={value!r} is not valid; valid values: {list(valid)}")


def legacy_modalities() -> list[str]:
    seen: list[str] = []
    for entry in models().values():
        legacy = entry.get("legacy")
        if legacy and legacy["modality"] not in seen:
            seen.append(legacy["modality"])
    return seen


def legacy_train_datasets(modality: str) -> list[str]:
    require_str("modality", modality)
    require_choice("modality", modality, legacy_modalities())
    return _unique(e["legacy"]["train_dataset"] for e in _legacy_entries()
                   if e["legacy"]["modality"] == modality)


def legacy_models(modality: str, train_dataset: str) -> list[str]:
    require_str("train_dataset", train_dataset)
    require_choice("train_dataset", train_dataset, legacy_train_datasets(modality))
    return _unique(e["legacy"]["model"] for e in _legacy_entries()
                   if e["legacy"]["modality"] == modality
                   and e["legacy"]["train_dataset"] == train_dataset)


def model_id_for_legacy(modality: str, train_dataset: str, model: str) -> str:
    """Map the legacy (modality, train_dataset, model) triple to a model id, validating each part."""
    require_str("model", model)
    require_choice("model", model, legacy_models(modality, train_dataset))
    for model_id, entry in models().items():
        if entry.get("legacy") == {"modality": modality, "train_dataset": train_dataset,
                                   "model": model}:
            return model_id
    raise AssertionError("unreachable: legacy_models() only lists catalogued triples")


def subjects(model_id: str) -> list[int]:
    return list(model_entry(model_id)["subjects"])


def rois(model_id: str) -> list[str]:
    return list(model_entry(model_id).get("rois", []))


def validate_subject(model_id: str, subject: Any) -> int:
    import numbers
    if isinstance(subject, bool) or not isinstance(subject, numbers.Integral):
        raise ParameterTypeError(
            f"subject must be an int, got {type(subject).__name__} ({subject!r})")
    subject = int(subject)
    require_choice("subject", subject, subjects(model_id))
    return subject


def validate_roi(model_id: str, roi: Any) -> str:
    if roi is None:  # upstream's legacy check is type(roi) != str -> TypeError
        raise ParameterTypeError(f"roi is required for {model_id} and must be a str; "
                                 f"valid values: {rois(model_id)}")
    require_str("roi", roi)
    require_choice("roi", roi, rois(model_id))
    return roi


def _legacy_entries():
    return [e for e in models().values() if e.get("legacy")]


def _unique(items) -> list:
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return out
