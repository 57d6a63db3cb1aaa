"""The ``--model`` grammar: ``MODEL[:key=v1,v2...]...`` parsed into one ModelRequest per subject,
ROI and variant, checked against the catalog and the bundle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import catalog, selection as selections
from ..bundle import Bundle
from ..catalog_entries import ModelEntry, SelectionRule
from ..errors import InvalidParameterError


@dataclass(frozen=True)
class ModelRequest:
    model_id: str
    subject: Any
    selection: dict
    variant: dict = field(default_factory=dict)  # {'train_split': 'split1'} or {'train_splits': 'single'}


def parse_model_spec(spec: str, bundle: Bundle) -> list[ModelRequest]:
    """``MODEL[:key=v1,v2...]...`` -> one request per subject, ROI and variant.

    MODEL is a model id or a short name (fwrf, eeg, fsaverage, meg, things_fmri, tvsd). Keys:
    ``subjects`` (ids, ranges such as ``1-4``, or ``all``: every exported subject, the default);
    ``roi`` (ROIs, one output each; ``A+B`` is one output of both; fwRF: ``all`` = every
    exported ROI); the model's list selections (``channels``, ``region``, ``sensors``: one
    output of all the names given); its masks given as indices and inclusive ranges
    (``timepoints=0-69``, ``electrodes=0-99``); and ``train_split`` (one output per split named)
    or ``train_splits=single`` for MEG.
    """
    name, *fields = spec.split(":")
    model_id = catalog.canonical_id(name)
    entry = catalog.model_entry(model_id)
    options: dict[str, list[str]] = {}
    for item in fields:
        key, equals, value = item.partition("=")
        if not equals or not value:
            raise InvalidParameterError(f"--model {spec!r}: expected key=value after ':', got {item!r}")
        if key in options:
            raise InvalidParameterError(f"--model {spec!r}: {key} is given twice")
        options[key] = value.split(",")
    variant_keys = set()
    if entry.variants:
        variant_keys = {entry.variants.parameter} | ({entry.variants.stacked.parameter} if entry.variants.stacked
                                                     else set())
    allowed = {"subjects"} | selections.allowed_keys(model_id) | variant_keys
    unknown = set(options) - allowed
    if unknown:
        raise InvalidParameterError(f"--model {spec!r}: unknown keys {sorted(unknown)}; "
                                    f"{model_id} takes {sorted(allowed)}")
    exported = [catalog.subject_key(model_id, s) for s in bundle.manifest.get("models", {}).get(model_id, {})
                .get("graphs", {})]
    if not exported:
        raise InvalidParameterError(f"--model {spec!r}: the bundle has no {model_id} models")
    subjects = _subjects(spec, options.get("subjects", ["all"]), model_id, exported)
    base: dict[str, Any] = {}
    rules = entry.selection
    for key, values in options.items():
        if key in rules and key != "roi":
            base[key] = (_index_mask(spec, key, values, _axis_size(entry, rules[key]))
                         if rules[key].kind == "mask" else values)
    variants = [{key: value} for key in sorted(variant_keys & set(options)) for value in options[key]] or [{}]
    requests = []
    for subject in subjects:
        rois = options.get("roi")
        if rois == ["all"]:  # the fwRF: every exported ROI; the others: every catalogued one
            rois = (catalog.rois(model_id) if entry.is_linear
                    else sorted(bundle.manifest["models"][model_id]["graphs"][str(subject)]))
        if not entry.is_linear and rois is None:
            raise InvalidParameterError(f"--model {spec!r}: {model_id} needs roi=NAME[,NAME...] or roi=all")
        for roi in rois or [None]:
            roi_value = None if roi is None else (roi if not entry.is_linear or "+" not in roi
                                                  else roi.split("+"))
            for variant in variants:
                requests.append(ModelRequest(model_id, subject, {**base, **({"roi": roi_value} if roi else {})},
                                             variant))
    return requests


def _subjects(spec: str, values: list[str], model_id: str, exported: list) -> list:
    if values == ["all"]:
        return exported
    expanded = []
    for value in values:  # numbered subjects also as ranges: 1-4
        low, dash, high = value.partition("-")
        expanded += _subject_range(spec, value, model_id) if dash and low.isdigit() and high.isdigit() else [value]
    try:
        return [catalog.subject_key(model_id, value) for value in expanded]
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"--model {spec!r}: subjects must be {catalog.subjects(model_id)} or 'all', "
                                    f"got {values}") from exc


def _subject_range(spec: str, value: str, model_id: str) -> list[str]:
    """'1-4' -> ['1', '2', '3', '4'], its size checked against the model's subjects before it is
    expanded (subjects=1-40000000 would otherwise fill gigabytes before its error)."""
    low, _, high = value.partition("-")
    known = catalog.subjects(model_id)
    try:
        first, last = int(low), int(high)
    except ValueError:  # more digits than Python converts
        first, last = 1, 0
    if not first <= last < first + len(known):
        raise InvalidParameterError(f"--model {spec!r}: subjects {value} is not a range within {model_id}'s "
                                    f"subjects {known}")
    return [str(n) for n in range(first, last + 1)]


def _axis_size(entry: ModelEntry, rule: SelectionRule) -> int:
    return next(output.axis(rule.axis).size for output in entry.outputs
                if output.axis(rule.axis) and rule.output in (None, output.name))


def _index_mask(spec: str, key: str, values: list[str], count: int) -> list[int]:
    """Indices and inclusive ranges ('0-69') -> a 0/1 mask of ``count`` values."""
    mask = [0] * count
    for value in values:
        low, _, high = value.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise InvalidParameterError(f"--model {spec!r}: {key} are indices or ranges like 0-69, "
                                        f"got {value!r}") from None
        if not 0 <= first <= last < count:
            raise InvalidParameterError(f"--model {spec!r}: {key} {value!r} outside 0-{count - 1}")
        mask[first:last + 1] = [1] * (last + 1 - first)
    return mask
