"""Queries over ``models_manifest.json``, the one catalog of NEST models.

The exporter and the runtime both read this file (as the typed objects of ``catalog_entries``);
nothing else in the code base lists model ids, subjects or ROIs.
"""
from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Mapping

from .catalog_entries import BackboneEntry, Legacy, Manifest, ManifestError, ModelEntry, parse_manifest
from .errors import InvalidParameterError, ModelNotFoundError, ParameterTypeError

MANIFEST_NAME = "models_manifest.json"


@functools.lru_cache(maxsize=1)
def load_manifest() -> Manifest:
    """The packaged models manifest, read and checked once."""
    text = resources.files(__package__).joinpath(MANIFEST_NAME).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"{MANIFEST_NAME} is not JSON: {exc}") from None
    return parse_manifest(data, MANIFEST_NAME)


def models() -> Mapping[str, ModelEntry]:
    return load_manifest().models


def model_entry(model_id: str) -> ModelEntry:
    return models()[canonical_id(model_id)]


def backbones() -> Mapping[str, BackboneEntry]:
    return load_manifest().backbones


def backbone(name: str) -> BackboneEntry:
    return backbones()[name]


def fwrf_model() -> ModelEntry:
    """The feature-weighted receptive field model: the one model that is not a backbone and a
    head (is_linear), whose export and toolkit files are its own."""
    (entry,) = [entry for entry in models().values() if not entry.is_linear]
    return entry


def canonical_id(model_id: str) -> str:
    """The manifest's id for ``model_id``, which may be an alias that upstream's cards use
    ('fmri-things_fmri1-vit_b_32') or a short name ('meg')."""
    require_str("model_id", model_id)
    entries = models()
    if model_id in entries:
        return model_id
    for known, entry in entries.items():
        if model_id in entry.aliases or model_id == entry.alias:
            return known
    raise ModelNotFoundError(f"model_id {model_id!r} is not a NEST/BERG model; valid model ids: {sorted(entries)}")


def is_linear(model_id: str) -> bool:
    """Whether the model is a backbone followed by a linear head (every model but the fwRF)."""
    return model_entry(model_id).is_linear


def id_parts(model_id: str) -> tuple[str, str, str]:
    """(modality, train_dataset, model): the parts of the id, and of upstream's folder names."""
    modality, train_dataset, model = canonical_id(model_id).split("-")
    return modality, train_dataset, model


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
        if entry.legacy and entry.legacy.modality not in seen:
            seen.append(entry.legacy.modality)
    return seen


def legacy_train_datasets(modality: str) -> list[str]:
    require_str("modality", modality)
    require_choice("modality", modality, legacy_modalities())
    return _unique(e.legacy.train_dataset for e in _legacy_entries() if e.legacy.modality == modality)


def legacy_models(modality: str, train_dataset: str) -> list[str]:
    require_str("train_dataset", train_dataset)
    require_choice("train_dataset", train_dataset, legacy_train_datasets(modality))
    return _unique(e.legacy.model for e in _legacy_entries()
                   if (e.legacy.modality, e.legacy.train_dataset) == (modality, train_dataset))


def model_id_for_legacy(modality: str, train_dataset: str, model: str) -> str:
    """Map the legacy (modality, train_dataset, model) triple to a model id, validating each part."""
    require_str("model", model)
    require_choice("model", model, legacy_models(modality, train_dataset))
    for model_id, entry in models().items():
        if entry.legacy == Legacy(modality, train_dataset, model):
            return model_id
    raise AssertionError("unreachable: legacy_models() only lists catalogued triples")


def subjects(model_id: str) -> list:
    return list(model_entry(model_id).subjects)


def subject_label(subject: int | str) -> str:
    """How a subject appears in file names: 'sub-01' for numbered subjects, 'sub-F' for TVSD's
    monkeys."""
    return f"{subject:02d}" if isinstance(subject, int) else str(subject)


def subject_key(model_id: str, text: str) -> int | str:
    """A subject as written in bundle.json or on a command line ('1', 'F') -> its catalog value."""
    known = subjects(model_id)
    if all(isinstance(s, int) for s in known):
        try:
            return validate_subject(model_id, int(text))
        except ValueError:
            pass
    return validate_subject(model_id, text)


def variants(model_id: str) -> list[str]:
    """Variants of one subject's model (MEG: training splits); ['all'] where there is one model."""
    described = model_entry(model_id).variants
    return list(described.values) if described else ["all"]


def validate_variant(model_id: str, variant: Any) -> str:
    described = model_entry(model_id).variants
    if described is None:
        raise InvalidParameterError(f"{model_id} has no variants (no train_split)")
    require_str(described.parameter, variant)
    require_choice(described.parameter, variant, list(described.values))
    return variant


def rois(model_id: str) -> list[str]:
    return list(model_entry(model_id).rois)


def validate_subject(model_id: str, subject: Any) -> int | str:
    """The subject as the catalog lists it: an int (most models) or a str (TVSD's monkeys 'N'
    and 'F'); the names upstream's cards also use ('P1' for MEG, 'sub-01' for THINGS-fMRI) are
    accepted for the numbers they stand for."""
    import numbers
    entry = model_entry(model_id)
    valid = subjects(model_id)
    if isinstance(subject, str) and subject in entry.subject_aliases:
        return entry.subject_aliases[subject]
    numbered = all(isinstance(s, int) for s in valid)
    if numbered and (isinstance(subject, bool) or not isinstance(subject, numbers.Integral)):
        raise ParameterTypeError(f"subject must be an int for {canonical_id(model_id)}, got "
                                 f"{type(subject).__name__} ({subject!r}); valid subjects: {valid}")
    if not numbered and not isinstance(subject, str):
        raise ParameterTypeError(f"subject must be a str for {canonical_id(model_id)}, got "
                                 f"{type(subject).__name__} ({subject!r}); valid subjects: {valid}")
    subject = int(subject) if numbered else subject
    require_choice("subject", subject, valid)
    return subject


def validate_roi(model_id: str, roi: Any) -> str:
    if roi is None:  # upstream's legacy check is type(roi) != str -> TypeError
        raise ParameterTypeError(f"roi is required for {model_id} and must be a str; "
                                 f"valid values: {rois(model_id)}")
    require_str("roi", roi)
    require_choice("roi", roi, rois(model_id))
    return roi


def _legacy_entries():
    return [e for e in models().values() if e.legacy]


def _unique(items) -> list:
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def array_names(model_id: str) -> list[str] | None:
    """Names of a model's output arrays when it has several (fsaverage: lh, rh), else None."""
    outputs = model_entry(model_id).outputs
    return [output.name for output in outputs] if len(outputs) > 1 else None


def describe_outputs(model_id: str) -> str:
    """The output's shape in words, from the manifest's output arrays."""
    entry = model_entry(model_id)
    if not entry.outputs:
        return entry.output_description
    arrays = []
    for output in entry.outputs:
        axes = [f"{axis.name}={axis.size}" for axis in output.axes]
        if output.block_axis:
            axes.insert(0, f"{output.block_axis}={len(output.blocks)}")
        arrays.append(f"float32 [N, {', '.join(axes)}]")
    text = arrays[0] if len(arrays) == 1 else "tuple (" + ", ".join(
        f"{o.name} {a}" for o, a in zip(entry.outputs, arrays)) + ")"
    stacked = entry.variants.stacked if entry.variants else None
    if stacked:
        text += (f"; {stacked.parameter}='single': [N, {stacked.axis}="
                 f"{len(stacked.values['single'])}, ...] (one per split model)")
    return text + "; selections shrink the axes they act on"
