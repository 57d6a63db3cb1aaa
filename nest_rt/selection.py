"""Validate the ``selection`` argument of the model-ID API and turn it into output indices.

Selections make the work smaller, not just the output: the indices chosen here decide which
regression columns the runtime keeps, so an fsaverage ROI of 1,000 vertices computes 1,000
outputs rather than 327,684.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import catalog
from .errors import InvalidParameterError, ParameterTypeError, ValidationError

EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
FWRF = "fmri-nsd-fwrf"
ALLOWED_KEYS = {FWRF: {"roi"}, EEG: {"channels", "timepoints"},
                FSAVERAGE: {"roi", "lh_vertices", "rh_vertices"}}
# The fsaverage model card lists 'OVWFA'; the ROI dictionaries use NSD's colour-table name 'OWFA'
# (upstream Q13), so either name selects that ROI here.
FSAVERAGE_ROI_ALIASES = {"OVWFA": "OWFA", "OWFA": "OVWFA"}


def check_keys(model_id: str, selection: Any) -> dict:
    if selection is None:
        return {}
    if not isinstance(selection, dict):
        raise ParameterTypeError(f"selection must be a dict or None, got {type(selection).__name__}")
    unknown = set(selection) - ALLOWED_KEYS[model_id]
    if unknown:
        raise InvalidParameterError(f"selection keys {sorted(unknown)} are not valid for {model_id}; "
                                    f"valid keys: {sorted(ALLOWED_KEYS[model_id])}")
    return selection


def fwrf_roi(selection: Any) -> str:
    selection = check_keys(FWRF, selection)
    if "roi" not in selection:
        raise InvalidParameterError(f"{FWRF} needs selection={{'roi': ...}}; valid ROIs: {catalog.rois(FWRF)}")
    return catalog.validate_roi(FWRF, selection["roi"])


def eeg_indices(selection: Any) -> tuple[np.ndarray, np.ndarray]:
    """(channel indices in the user's order, ascending time indices)."""
    selection = check_keys(EEG, selection)
    entry = catalog.model_entry(EEG)
    names = entry["channels"]
    channels = np.arange(len(names))
    if "channels" in selection:
        chosen = selection["channels"]
        if isinstance(chosen, str) or not isinstance(chosen, (list, tuple)):
            raise ParameterTypeError(f"selection['channels'] must be a list of channel names, "
                                     f"got {type(chosen).__name__}")
        if not all(isinstance(name, str) for name in chosen):
            raise ParameterTypeError("selection['channels'] must hold channel names (str)")
        unknown = [name for name in chosen if name not in names]
        if unknown:
            raise ValidationError(f"selection['channels'] has unknown channels {unknown}; "
                                        f"valid channels: {names}")
        if not chosen:
            raise ValidationError("selection['channels'] is empty; leave it out for all 63 channels")
        channels = np.array([names.index(name) for name in chosen])
    times = np.arange(entry["times"]["count"])
    if "timepoints" in selection:
        times = np.flatnonzero(binary_mask("selection['timepoints']", selection["timepoints"], len(times)))
    return channels, times


def eeg_columns(channels: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Regression columns r*8820 + c*140 + t in output order [repetition, channel, time]."""
    entry = catalog.model_entry(EEG)
    per_channel = entry["times"]["count"]
    per_repetition = len(entry["channels"]) * per_channel
    reps = np.arange(entry["repetitions"])
    return (reps[:, None, None] * per_repetition + channels[None, :, None] * per_channel
            + times[None, None, :]).ravel()


def eeg_plan(selection: Any) -> tuple[np.ndarray | None, tuple[int, int, int], dict[str, np.ndarray]]:
    """(regression columns, or None for all; output shape per image [4, channels, times]; the
    selected channel and time indices)."""
    channels, times = eeg_indices(selection)
    repetitions = catalog.model_entry(EEG)["repetitions"]
    return ((eeg_columns(channels, times) if selection else None), (repetitions, len(channels), len(times)),
            {"channels": channels, "times": times})


def fsaverage_plan(selection: Any, roi_vertices) -> tuple[np.ndarray | None, tuple, dict[str, np.ndarray]]:
    """(regression columns, or None for all; per-image output shapes ((lh,), (rh,)); the
    selected vertex indices per hemisphere)."""
    lh, rh = fsaverage_indices(selection, roi_vertices)
    vertices = catalog.model_entry(FSAVERAGE)["vertices_per_hemisphere"]
    return ((np.concatenate([lh, rh + vertices]) if selection else None), ((len(lh),), (len(rh),)),
            {"lh_vertices": lh, "rh_vertices": rh})


def fsaverage_indices(selection: Any, roi_vertices) -> tuple[np.ndarray, np.ndarray]:
    """(lh vertex indices, rh vertex indices). ``roi_vertices(name)`` returns an ROI's
    (lh, rh) indices from the subject's metadata."""
    selection = check_keys(FSAVERAGE, selection)
    vertices = catalog.model_entry(FSAVERAGE)["vertices_per_hemisphere"]
    everything = np.arange(vertices)
    if "roi" in selection:
        if {"lh_vertices", "rh_vertices"} & set(selection):
            raise ValidationError("give selection['roi'] or vertex masks, not both "
                                        "(upstream silently ignored the masks)")
        roi = selection["roi"]
        catalog.require_str("selection['roi']", roi)
        if roi not in catalog.rois(FSAVERAGE) + ["OWFA"]:
            raise ValidationError(f"selection['roi']={roi!r} is not valid; valid values: {catalog.rois(FSAVERAGE)}")
        lh, rh = roi_vertices(roi)
        if len(lh) + len(rh) == 0:
            raise ValidationError(f"ROI {roi!r} has no vertices in either hemisphere for this subject")
        return lh, rh
    lh = everything if "lh_vertices" not in selection else np.flatnonzero(
        binary_mask("selection['lh_vertices']", selection["lh_vertices"], vertices))
    rh = everything if "rh_vertices" not in selection else np.flatnonzero(
        binary_mask("selection['rh_vertices']", selection["rh_vertices"], vertices))
    return lh, rh


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
