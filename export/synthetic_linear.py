"""Random toolkit files of any linear model, written from its models_manifest.json entry alone.

A linear model (backbone features -> StandardScaler -> PCA -> linear regression) is described by
its manifest entry: where its files are (``toolkit_files``: the first pattern of each, for every
subject and variant), where the head's parts sit in the weights dict (``head``), the size of each
output (``outputs``), and the metadata its axis labels and selections read (``outputs``' labels,
``selection``). From these, and the random stand-in weights its backbone's file draws
(``Backbone.random_state_dict``), this module writes files that ``nest-rt export`` reads as it
reads upstream's. A model added to the manifest on a registered backbone therefore has a synthetic
toolkit (``nest-rt synthetic-toolkit --models ALIAS``) without code here.

The random head parts (``random_scaler``, ``random_pca``, ``random_regression``) are shared with
synthetic_vit and synthetic_berg, whose files follow upstream's loaders key by key, with paths
written from upstream and not from the manifest on purpose (so that they test the manifest).

The scaler statistics are measured on features of the random backbone itself, so standardised
features, PCA components and responses all have unit-order scale and vary across images. Output
sizes are always the real ones; ``components`` (250 in real files) can be made small for fast tests.
"""
from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from nest_rt import catalog
from nest_rt.catalog_entries import ModelEntry
from nest_rt.demo import synthetic_images

from . import backbones
from .torch_reference import reference_features

CALIBRATION_IMAGES = 6
_PCA_SAMPLES = 10_000  # n_samples_ of the generic PCAs (a plausible training set size)


# -- random head parts ------------------------------------------------------------------------
def random_scaler(features: np.ndarray, rng) -> dict:
    """A StandardScaler calibrated on ``features`` [n, F] of the model's own backbone."""
    count = features.shape[1]
    mean = features.mean(axis=0).astype(np.float64) + rng.normal(0, 0.01, count)
    var = features.var(axis=0).astype(np.float64) * rng.uniform(0.8, 1.2, count) + 1e-3
    scale = np.sqrt(var)
    scale[var < 1e-2] = 1.0  # sklearn replaces near-zero scales by 1: readers must use scale_
    return {"mean_": mean, "var_": var, "scale_": scale, "n_features_in_": count,
            "n_samples_seen_": np.int64(16540)}


def random_pca(rng, components: int, samples: int, features: int) -> dict:
    # Fitted on float32 features (the scaler returns float32 for float32 input), scikit-learn's
    # PCA keeps float32 for components_, mean_ and the variances. A float64 mean_ here would make
    # scikit-learn upcast the components on every transform and slow the upstream benchmark path.
    rows = rng.normal(0, 1, (components, features)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    variance = np.sort(rng.uniform(1, 100, components))[::-1].astype(np.float32)
    return {"components_": rows, "mean_": rng.normal(0, 0.05, features).astype(np.float32),
            "explained_variance_": variance, "explained_variance_ratio_": variance / variance.sum() / 2,
            "singular_values_": np.sqrt(variance * (samples - 1)), "n_components_": components,
            "n_samples_": samples, "noise_variance_": np.float64(0.5), "n_features_in_": features}


def random_regression(rng, outputs: int, components: int) -> dict:
    coef = rng.normal(0, 1 / np.sqrt(components), (outputs, components)).astype(np.float32)
    return {"coef_": coef, "intercept_": rng.normal(0, 0.1, outputs).astype(np.float32),
            "n_features_in_": components}


def save_npy_dict(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, content, allow_pickle=True)  # upstream's format: a pickled dict in a 0-d array


def calibration_features(backbone: backbones.Backbone, weights_path: Path | None, seed: int) -> np.ndarray:
    """The backbone's features [CALIBRATION_IMAGES, F] on synthetic images, with the weights at
    ``weights_path`` (None: its own, for a backbone that takes no weights file)."""
    images = synthetic_images(CALIBRATION_IMAGES, 256, seed)
    return reference_features(backbone.reference(backbone.network(weights_path)), images, backbone.transform())


# -- any linear model, from its manifest entry ------------------------------------------------
def write_linear_models(nest_dir: Path, chosen: dict[str, list], components: int = 250,
                        seed: int = 0) -> dict[str, Path | None]:
    """Random files for ``chosen`` (model id -> subjects), every variant of each, and the random
    stand-in weights of their backbones beside them; returns backbone name -> weights file (None
    for a backbone that takes none). The same seed writes the same files whatever else is chosen."""
    nest_dir = Path(nest_dir)
    weights: dict[str, Path | None] = {}
    features: dict[str, np.ndarray] = {}
    for model_id, subjects in chosen.items():
        name = catalog.model_entry(model_id).backbone
        if name not in features:
            backbone = backbones.get(name)
            weights[name] = backbone.write_random_weights(nest_dir, seed)
            features[name] = calibration_features(backbone, weights[name], seed)
        for subject in subjects:
            write_linear_model(nest_dir, model_id, subject, features[name], components, seed)
    return weights


def write_linear_model(nest_dir: Path, model_id: str, subject, features: np.ndarray, components: int,
                       seed: int) -> None:
    """One subject's weights file per variant and its metadata, at the manifest's first patterns."""
    entry = catalog.model_entry(model_id)
    position = catalog.subjects(model_id).index(subject)
    rng = np.random.default_rng([seed, zlib.crc32(model_id.encode()), position])
    variants = entry.variants.values if entry.variants else [None]
    for variant in variants:  # each variant (MEG's train split) is its own trained head
        path = entry.toolkit_files["weights"][0].format(subject=subject, variant=variant)
        save_npy_dict(Path(nest_dir) / path, random_head(entry, features, rng, components))
    metadata = random_metadata(entry, rng)
    for path in {entry.toolkit_files["metadata"][0].format(subject=subject, variant=v) for v in variants}:
        save_npy_dict(Path(nest_dir) / path, metadata)


def random_head(entry: ModelEntry, features: np.ndarray, rng, components: int) -> dict:
    """The weights dict: the scaler, the PCA, and each block's regression with as many rows as its
    output has values, each where the entry's ``head`` says. One shared PCA where the head may
    have one (a quarter of the size of EEG's four, which current BERG files hold), else one per block."""
    head, weights = entry.head, {}
    rows = {block: math.prod(axis.size for axis in output.axes) for output in entry.outputs for block in output.blocks}
    per_block = head.shared_pca is None
    _set_path(weights, head.scaler, random_scaler(features, rng))
    if not per_block:
        _set_path(weights, head.shared_pca, random_pca(rng, components, _PCA_SAMPLES, features.shape[1]))
    for index, block in enumerate(head.blocks):
        if per_block:
            _set_path(weights, block.pca, random_pca(rng, components, _PCA_SAMPLES, features.shape[1]))
        _set_path(weights, block.regression, random_regression(rng, rows[index], components))
    return weights


def random_metadata(entry: ModelEntry, rng) -> dict:
    """What the runtime reads from a subject's metadata: each labelled axis's labels (the manifest's
    names where a selection picks by them, else the positions) and what each selection kind reads."""
    metadata: dict[str, Any] = {}
    sizes = {axis.name: axis.size for output in entry.outputs for axis in output.axes}
    named = {rule.axis: rule.names for rule in entry.selection.values() if rule.kind == "names"}
    for output in entry.outputs:
        for axis in output.axes:
            if axis.labels:
                labels = (np.asarray(entry.names(named[axis.name]), dtype=str) if axis.name in named
                          else np.arange(axis.size, dtype=np.int64))
                _set_path(metadata, axis.labels, labels)
    for rule in entry.selection.values():
        size = sizes[rule.axis]
        choices = entry.names(rule.choices) if rule.choices else ()
        if rule.kind == "metadata_equals":  # one of the choices per position
            _set_path(metadata, rule.metadata, rng.choice(np.asarray(choices, dtype=str), size))
        elif rule.kind == "metadata_label":  # a label list, and each position's index into it
            _set_path(metadata, rule.labels, np.asarray(choices, dtype=str))
            _set_path(metadata, rule.metadata, rng.integers(0, len(choices), size))
        elif rule.kind == "metadata_indices":  # each choice's positions, per output where named
            outputs = [output.name for output in entry.outputs if output.axis(rule.axis)]
            for output in outputs if "{output}" in rule.metadata else outputs[:1]:
                for name in choices:
                    count = int(rng.integers(1, max(2, size // 20)))
                    indices = np.sort(rng.choice(size, count, replace=False)).astype(np.int64)
                    _set_path(metadata, rule.metadata.format(output=output, name=name), indices)
    return metadata


def _set_path(tree: dict, path: str, value: Any) -> None:
    """tree[a][b][c] = value for the path 'a/b/c' (the manifest's nested keys)."""
    *parents, last = path.split("/")
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[last] = value
