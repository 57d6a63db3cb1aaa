"""Read NEST toolkit files (both layouts) without running arbitrary pickled code.

Upstream reads ``.pt`` checkpoints with ``torch.load(weights_only=False)`` and ``.npy`` dicts
with ``np.load(allow_pickle=True)``; both execute whatever callables a file names. Here the
``.pt`` files go through torch's ``weights_only`` unpickler with an allow-list of the few
globals NEST checkpoints contain, and the ``.npy`` dicts through a restricted unpickler.
This is the only place in nest_rt that unpickles anything; the runtime never does.
"""
from __future__ import annotations

import argparse
import io
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np

from nest_rt import catalog
from nest_rt.bundle import nested_value
from nest_rt.catalog_entries import ModelEntry
from nest_rt.response_files import PREGENERATED_DIR

LAYOUT_CURRENT = "current"
LAYOUT_LEGACY = "legacy"


class ToolkitError(FileNotFoundError):
    """A toolkit file is missing, unreadable, or holds something other than NEST data."""


def _read_failure(path: Path, exc: Exception) -> ToolkitError:
    """A one-line error naming the file. torch's weights_only refusal is a long text that
    suggests disabling the safety check; keep only the global it refused."""
    reason = str(exc)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", reason)
    if refused:
        reason = f"refusing to unpickle {refused.group(1)}: not a NEST data type"
    else:
        reason = reason.strip().splitlines()[0] if reason.strip() else type(exc).__name__
    return ToolkitError(f"cannot read toolkit file {path}: {reason}")


# -- .npy dicts ----------------------------------------------------------------------------
_ALLOWED_NPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("builtins", "slice"), ("builtins", "complex"), ("builtins", "set"), ("builtins", "frozenset"),
    ("collections", "OrderedDict"),
}


# Current BERG EEG files pickle fitted scikit-learn PCA objects (one per repetition). They are
# read without scikit-learn: the class is replaced by PcaAttributes, which only collects the
# pickled attributes; no scikit-learn code runs, and any other class is still refused.
_PCA_CLASSES = {("sklearn.decomposition._pca", "PCA"), ("sklearn.decomposition.pca", "PCA")}


class PcaAttributes:
    """Stand-in for a pickled sklearn PCA: its attributes (components_, mean_, ...) as a dict."""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a pickled PCA holds a {type(state).__name__}, expected its attributes")
        self.attributes = dict(state)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_NPY_GLOBALS or (
                module in ("numpy.dtypes",) and name.endswith("DType")):
            return super().find_class(module, name)
        if (module, name) in _PCA_CLASSES:
            return PcaAttributes
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not a NEST data type")


def load_npy_dict(path: Path) -> dict[str, Any]:
    """A NEST ``.npy`` file (0-d object array holding a dict), unpickled with an allow-list."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"toolkit file missing: {path}")
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(handle)
            payload = handle.read()
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"expected a dict saved as a 0-d object array, got {dtype} {shape}")
        content = _RestrictedUnpickler(io.BytesIO(payload)).load().item()
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as exc:
        raise _read_failure(path, exc) from exc
    if not isinstance(content, dict):
        raise ToolkitError(f"toolkit file {path} holds a {type(content).__name__}, expected a dict")
    return content


# -- .pt checkpoints ------------------------------------------------------------------------
def _torch_safe_globals() -> list:
    """Globals that NEST fwRF checkpoints need beyond plain tensors."""
    from numpy._core import multiarray
    dtype_classes = [type(np.dtype(t)) for t in (np.float32, np.float64, np.int64, np.int32,
                                                  np.int16, np.uint8, np.bool_)]
    return [argparse.Namespace, np.ndarray, np.dtype, *dtype_classes,
            multiarray._reconstruct, (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
            multiarray.scalar, (multiarray.scalar, "numpy.core.multiarray.scalar")]


def load_checkpoint(path: Path) -> dict[str, Any]:
    import torch
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"toolkit file missing: {path}")
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise _read_failure(path, exc) from exc
    if not isinstance(checkpoint, dict) or "best_params" not in checkpoint:
        raise ToolkitError(f"toolkit file {path} is not a NEST fwRF checkpoint (no 'best_params')")
    return checkpoint


# -- layout and paths ------------------------------------------------------------------------
def detect_layout(nest_dir: Path) -> str:
    """'legacy' when the legacy-only EEG files or pregenerated responses exist, else 'current'."""
    if (nest_dir / legacy_eeg_model().toolkit_files["legacy_scaler"]).exists() or (
            nest_dir / PREGENERATED_DIR).exists():
        return LAYOUT_LEGACY
    return LAYOUT_CURRENT


def fwrf_files(nest_dir: Path, subject: int, roi: str) -> dict[str, Any]:
    """Toolkit paths of one fwRF ROI: its checkpoint(s) (split-1 first) and metadata file."""
    entry = catalog.fwrf_model()
    patterns = entry.toolkit_files
    if roi in entry.split_rois:
        weights = [nest_dir / patterns["weights_split"].format(subject=subject, roi=roi, split=k)
                   for k in (1, 2)]
    else:
        weights = [nest_dir / patterns["weights"].format(subject=subject, roi=roi)]
    return {"weights": weights,
            "metadata": nest_dir / patterns["metadata"].format(subject=subject, roi=roi)}


def available_fwrf(nest_dir: Path) -> dict[int, list[str]]:
    """Subjects and ROIs whose fwRF weights and metadata are all present."""
    found: dict[int, list[str]] = {}
    entry = catalog.fwrf_model()
    for subject in entry.subjects:
        for roi in entry.rois:
            files = fwrf_files(nest_dir, subject, roi)
            if all(p.is_file() for p in files["weights"]) and files["metadata"].is_file():
                found.setdefault(subject, []).append(roi)
    return found


def legacy_eeg_model() -> ModelEntry:
    """The model whose legacy toolkit layout spreads its head over separate scaler, PCA and
    regression files (NEST's ViT-B/32 EEG)."""
    (entry,) = [entry for entry in catalog.models().values() if "legacy_scaler" in entry.toolkit_files]
    return entry


def eeg_files(nest_dir: Path, subject: int, layout: str) -> dict[str, Path]:
    """EEG head and metadata paths of one subject in the given layout."""
    patterns = legacy_eeg_model().toolkit_files
    fill = {"subject": subject}
    if layout == LAYOUT_LEGACY:
        return {"scaler": nest_dir / patterns["legacy_scaler"], "pca": nest_dir / patterns["legacy_pca"],
                "regression": nest_dir / patterns["legacy_regression"].format(**fill),
                "metadata": nest_dir / patterns["legacy_metadata"].format(**fill)}
    return {"weights": nest_dir / patterns["weights"][0].format(**fill),
            "metadata": nest_dir / patterns["metadata"][0].format(**fill)}


def eeg_layout(nest_dir: Path) -> str:
    """EEG files come in two layouts; the legacy one has the shared StandardScaler file."""
    return LAYOUT_LEGACY if eeg_files(nest_dir, 1, LAYOUT_LEGACY)["scaler"].is_file() else LAYOUT_CURRENT


def head_files(nest_dir: Path, model_id: str, subject, variant: str = "all") -> dict[str, Path]:
    """Toolkit paths of one linear model's weights and metadata. Each is the first of the
    manifest's patterns that exists (else the first). Where some patterns name the variant, one
    without ``{variant}`` (an older file naming no training split) stands for the default
    variant only; metadata that no pattern names a variant for serves every variant."""
    if model_id == legacy_eeg_model().id and eeg_layout(nest_dir) == LAYOUT_LEGACY:
        return eeg_files(nest_dir, subject, LAYOUT_LEGACY)
    entry = catalog.model_entry(model_id)
    default = entry.variants.default if entry.variants else "all"
    found = {}
    for key in ("weights", "metadata"):
        patterns = entry.toolkit_files[key]
        per_variant = any("{variant}" in pattern for pattern in patterns)
        candidates = [nest_dir / pattern.format(subject=subject, variant=variant) for pattern in patterns
                      if "{variant}" in pattern or variant == default or not per_variant]
        found[key] = next((path for path in candidates if path.is_file()), candidates[0])
    return found


def load_head(nest_dir: Path, model_id: str, subject, variant: str = "all") -> tuple[dict[str, Any], dict[str, str]]:
    """One subject's head weights as a dict of plain arrays, and the format they were found in.

    The legacy EEG layout (separate StandardScaler, 1000-component PCA and regression files)
    is assembled into the current dict; its first 250 components are used, as upstream. PCA
    objects pickled by scikit-learn become dicts of their attributes."""
    files = head_files(nest_dir, model_id, subject, variant)
    if "scaler" in files:
        weights = {"scaler_param": load_npy_dict(files["scaler"]), "pca_param": load_npy_dict(files["pca"]),
                   "reg_param": load_npy_dict(files["regression"])}
        layout = LAYOUT_LEGACY
    else:
        weights, layout = load_npy_dict(files["weights"]), LAYOUT_CURRENT
    forms = set()

    def plain(node):
        if isinstance(node, PcaAttributes):
            forms.add("scikit-learn PCA objects")
            return node.attributes
        if isinstance(node, dict):
            if "components_" in node:
                forms.add("arrays")
            return {key: plain(value) for key, value in node.items()}
        return node
    weights = plain(weights)
    return weights, {"layout": layout, "pca_form": " and ".join(sorted(forms)) or "none"}


def available_heads(nest_dir: Path, model_id: str) -> dict[Any, list[str]]:
    """Subject -> variants of a linear model whose weights and metadata files are all present."""
    found: dict[Any, list[str]] = {}
    for subject in catalog.subjects(model_id):
        for variant in catalog.variants(model_id):
            if all(path.is_file() for path in head_files(nest_dir, model_id, subject, variant).values()):
                found.setdefault(subject, []).append(variant)
    return found


def head_blocks(weights: dict, model_id: str, where: str) -> tuple[dict, list[dict], list[dict], bool]:
    """(scaler, the PCA of each regression block, the regression blocks, whether each block has
    its own PCA), found in a head dict where the manifest's ``head`` entry says. One shared PCA
    holds 'components_' itself; otherwise every block names its own (EEG's 'pca_param/rep-N')."""
    head = catalog.model_entry(model_id).head
    problems = []
    scaler = nested_value(weights, head.scaler)
    if not isinstance(scaler, dict):
        problems.append(f"no StandardScaler parameters at {head.scaler!r}")
    shared = nested_value(weights, head.shared_pca)
    # each block has its own PCA where the head names no shared one, or where the shared key
    # holds the blocks' PCAs rather than one (EEG's pca_param/rep-N)
    per_block = head.shared_pca is None or (isinstance(shared, dict) and "components_" not in shared)
    pcas, regressions = [], []
    for block in head.blocks:
        regression = nested_value(weights, block.regression)
        pca = nested_value(weights, block.pca) if per_block and block.pca else shared
        if not isinstance(regression, dict) or not {"coef_", "intercept_"} <= set(regression):
            problems.append(f"no regression coef_/intercept_ at {block.regression!r}")
        if not isinstance(pca, dict) or not {"components_", "mean_"} <= set(pca):
            problems.append(f"no PCA components_/mean_ at {block.pca if per_block else head.shared_pca!r}")
        pcas.append(pca)
        regressions.append(regression)
    if problems:
        raise ToolkitError(f"{where}: " + "; ".join(problems) + f" (top-level keys: {sorted(weights)})")
    return scaler, pcas, regressions, per_block
