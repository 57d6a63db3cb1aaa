"""Validate the ``selection`` argument of the model-ID API and turn it into output indices.

Selections make the work smaller, not just the output: the indices chosen here decide which
regression columns the runtime keeps, so an fsaverage ROI of 1,000 vertices computes 1,000
outputs rather than 327,684.

Every linear model's selections are described in ``models_manifest.json`` (its ``selection``,
``outputs`` and ``combine`` entries); this module interprets those descriptions. A selection key
has a kind (how its value becomes indices) and acts on one axis of one or all output arrays:

- ``names``: a list of names from a manifest list (EEG channels), kept in the user's order;
- ``mask``: a 0/1 vector as long as the axis;
- ``metadata_equals``: names matched against a per-position metadata array (MEG regions);
- ``metadata_label``: names looked up in a metadata label list, whose index is matched against
  a per-position assignment array (TVSD ROIs);
- ``metadata_indices``: names whose index arrays are stored in the metadata (fMRI ROIs).

Keys acting on the same axis are combined as the model's ``combine`` entry says: ``union``
(sorted, without repeats), ``concatenate`` (in the manifest's key order, repeats kept, as
upstream's THINGS-fMRI does) or, by default, at most one key per axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import catalog
from .catalog_entries import SelectionRule
from .bundle import nested_value
from .errors import InvalidParameterError, ParameterTypeError, ValidationError

@dataclass
class OutputPlan:
    """One output array of a model after selection: which regression blocks feed it and the
    indices kept on each of its axes."""

    name: str
    blocks: list[int]
    block_axis: str | None
    axes: list[dict]
    indices: dict[str, np.ndarray]

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-image shape: (blocks, *axes) when the blocks form an axis, else (*axes)."""
        sizes = tuple(len(self.indices[axis["name"]]) for axis in self.axes)
        return (len(self.blocks), *sizes) if self.block_axis else sizes

    @property
    def rows(self) -> np.ndarray:
        """Regression rows (within one block) of the kept outputs, in output order: the axes'
        indices combined in C order, as upstream's reshape of each block's rows."""
        grids = np.meshgrid(*[self.indices[axis["name"]] for axis in self.axes], indexing="ij")
        return np.ravel_multi_index([grid.ravel() for grid in grids],
                                    [axis["size"] for axis in self.axes]).astype(np.int64)

    def is_everything(self) -> bool:
        return all(np.array_equal(self.indices[axis["name"]], np.arange(axis["size"])) for axis in self.axes)


def check_keys(model_id: str, selection: Any) -> dict:
    if selection is None:
        return {}
    if not isinstance(selection, dict):
        raise ParameterTypeError(f"selection must be a dict or None, got {type(selection).__name__}")
    allowed = allowed_keys(model_id)
    unknown = set(selection) - allowed
    if unknown:
        raise InvalidParameterError(f"selection keys {sorted(unknown, key=str)} are not valid for {model_id}; "
                                    f"valid keys: {sorted(allowed)}")
    return selection


def allowed_keys(model_id: str) -> set[str]:
    entry = catalog.model_entry(model_id)
    return set(entry.selection) if entry.is_linear else {"roi"}  # the fwRF: one ROI per model


def fwrf_roi(model_id: str, selection: Any) -> str:
    selection = check_keys(model_id, selection)
    if "roi" not in selection:
        raise InvalidParameterError(f"{model_id} needs selection={{'roi': ...}}; valid ROIs: {catalog.rois(model_id)}")
    return catalog.validate_roi(model_id, selection["roi"])


def plan(model_id: str, selection: Any, metadata: Callable[[], dict]) -> list[OutputPlan]:
    """The output arrays of a linear model under ``selection``. ``metadata()`` returns the
    subject's metadata dict; it is called only if a key needs it."""
    selection = check_keys(model_id, selection)
    entry = catalog.model_entry(model_id)
    rules = entry.selection
    for key, rule in rules.items():
        clash = [other for other in rule.excludes if key in selection and other in selection]
        if clash:
            raise ValidationError(f"give selection[{key!r}] or selection[{clash[0]!r}], not both "
                                  "(upstream silently ignored one of them)")
    chosen: dict[tuple[str, str], list[tuple[str, np.ndarray]]] = {}
    for key, rule in rules.items():  # the manifest's order decides the order of concatenation
        if key not in selection:
            continue
        for output in entry.outputs:
            if rule.output in (None, output.name) and output.axis(rule.axis):
                found = _indices(entry, key, rule, selection[key], output.axis(rule.axis).size, output.name, metadata)
                chosen.setdefault((output.name, rule.axis), []).append((key, found))
    plans = []
    for output in entry.outputs:
        indices = {}
        for axis in output.axes:
            parts = chosen.get((output.name, axis.name))
            indices[axis.name] = np.arange(axis.size) if parts is None else _combine(entry, axis.name, parts)
        plans.append(OutputPlan(output.name, list(output.blocks), output.block_axis,
                                [axis.as_json() for axis in output.axes], indices))
    if all(min(p.shape) == 0 for p in plans):
        empty = sorted({axis["name"] for p in plans for axis in p.axes if len(p.indices[axis["name"]]) == 0})
        raise ValidationError(f"selection {sorted(selection)} selects nothing of {model_id} for this subject "
                              f"(no {', '.join(empty)})")
    return plans


def _combine(entry, axis: str, parts: list[tuple[str, np.ndarray]]) -> np.ndarray:
    rule = entry.combine.get(axis, "one")
    if len(parts) == 1 and rule != "union":
        return parts[0][1]
    if rule == "union":
        return np.unique(np.concatenate([found for _, found in parts]))
    if rule == "concatenate":
        return np.concatenate([found for _, found in parts])
    keys = [key for key, _ in parts]
    raise ValidationError(f"selection keys {keys} both choose the {axis} of {entry.id}; give one of them")


def _indices(entry, key: str, rule: SelectionRule, value: Any, size: int, output: str,
             metadata: Callable[[], dict]) -> np.ndarray:
    name = f"selection[{key!r}]"
    if rule.kind == "mask":
        return np.flatnonzero(binary_mask(name, value, size))
    if rule.kind == "names":
        names = list(entry.names(rule.names))
        chosen = _names(name, value, names, bare_name=False)
        return np.array([names.index(item) for item in chosen], dtype=np.int64)
    chosen = _names(name, value, list(entry.names(rule.choices)) + list(rule.aliases), bare_name=True)
    if rule.kind == "metadata_equals":
        per_position = np.asarray(_metadata_value(metadata(), rule.metadata, name)).astype(str)
        return np.flatnonzero(np.isin(per_position, chosen))
    if rule.kind == "metadata_label":
        labels = [str(label) for label in _metadata_value(metadata(), rule.labels, name)]
        assignments = np.asarray(_metadata_value(metadata(), rule.metadata, name))
        missing = [item for item in chosen if item not in labels]
        if missing:
            raise ValidationError(f"{name}: {missing} not in this subject's labels {labels}")
        return np.flatnonzero(np.isin(assignments, [labels.index(item) for item in chosen]))
    if rule.kind == "metadata_indices":
        outputs = [o.name for o in entry.outputs]
        parts = [_roi_indices(rule, metadata(), item, output, outputs, name) for item in chosen]
        found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if found.size and (found.min() < 0 or found.max() >= size):
            raise ValidationError(f"{name}: the metadata's indices fall outside 0..{size - 1}")
        return found
    raise AssertionError(f"unknown selection kind {rule.kind!r}: catalog_entries checks the kinds")


def _roi_indices(rule: SelectionRule, metadata: dict, item: str, output: str, outputs: list[str], name: str) -> np.ndarray:
    """One ROI's stored indices; an alias (fsaverage's card says 'OVWFA', its metadata 'OWFA')
    is tried when the name itself is not stored. An ROI stored for another output only (one
    hemisphere) is empty here."""
    candidates = [c for c in (item, rule.aliases.get(item)) if c]
    for candidate in candidates:
        path = rule.metadata.format(output=output, name=candidate)
        if _has_path(metadata, path):
            return np.asarray(_metadata_value(metadata, path, name), dtype=np.int64).ravel()
    if any(_has_path(metadata, rule.metadata.format(output=o, name=c)) for o in outputs for c in candidates):
        return np.zeros(0, np.int64)
    listed = sorted({roi for o in outputs for roi in
                     _metadata_value(metadata, rule.metadata.format(output=o, name="").rstrip("/"), name)})
    raise ValidationError(f"{name}={item!r}: this subject's metadata has no such ROI; it lists {listed}")


def _has_path(metadata: dict, path: str) -> bool:
    return nested_value(metadata, path) is not None


def _metadata_value(metadata: dict, path: str, name: str) -> Any:
    value = nested_value(metadata, path)
    if value is None:
        raise ValidationError(f"{name} needs the subject's metadata {path!r}, which the bundle does not have")
    return value


def _names(name: str, value: Any, valid: list[str], bare_name: bool) -> list[str]:
    """A list of names (or, with ``bare_name``, one name: upstream's ROI validator takes both,
    its channel validator only lists), each one of ``valid``."""
    chosen = [value] if bare_name and isinstance(value, str) else value
    if not isinstance(chosen, (list, tuple, np.ndarray)) or not all(isinstance(v, (str, np.str_)) for v in chosen):
        expected = "a name or a list of names (str)" if bare_name else "a list of names (str)"
        raise ParameterTypeError(f"{name} must be {expected}, got {type(value).__name__}")
    chosen = [str(v) for v in chosen]
    if not chosen:
        raise ValidationError(f"{name} is empty; leave it out to keep everything")
    unknown = [v for v in chosen if v not in valid]
    if unknown:
        raise ValidationError(f"{name} has unknown values {unknown}; valid values: {valid}")
    return chosen


def binary_mask(name: str, values: Any, length: int) -> np.ndarray:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)):
        raise ParameterTypeError(f"{name} must be a list or array of 0/1 values, got {type(values).__name__}")
    try:
        mask = np.asarray(values)
    except ValueError as exc:  # ragged nested lists
        raise ValidationError(f"{name} must be a flat list of 0/1 values ({exc})") from exc
    if mask.ndim != 1 or len(mask) != length:
        raise ValidationError(f"{name} must be 1-D with {length} values, got shape {mask.shape}")
    if mask.dtype == object or not np.isin(mask, (0, 1)).all():
        raise ValidationError(f"{name} must hold only 0 and 1")
    if not mask.any():
        raise ValidationError(f"{name} selects nothing: it needs at least one 1")
    return mask.astype(bool)
