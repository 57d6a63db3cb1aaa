"""Synthetic ViT-B/32 toolkit parts: a random torchvision state dict, EEG heads (current and
legacy layouts) and fsaverage heads, in upstream's file formats.

The scaler statistics are measured on features of the random ViT itself, so standardised
features, PCA components and responses all have unit-order scale and vary across images.
``components`` (250 in real files) and ``legacy_components`` (1000) can be made smaller for
fast tests; the feature count (460,800) and output sizes are always the real ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchvision.models import vit_b_32

from nest_rt import catalog

from .backbones.vit_b_32 import VIT_B_32
from .synthetic import check_pregenerated, synthetic_images, write_pregenerated
from .toolkit import LAYOUT_CURRENT, LAYOUT_LEGACY, eeg_files, head_files
from .torch_reference import reference_features

VIT_WEIGHTS_NAME = "vit_b_32_synthetic.pth"
EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
_CALIBRATION_IMAGES = 6


def write_vit_weights(nest_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised torchvision vit_b_32 state dict (what --vit-weights expects)."""
    torch.manual_seed(seed)
    path = Path(nest_dir) / VIT_WEIGHTS_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(vit_b_32().state_dict(), path)
    return path


def write_vit_toolkit(nest_dir: Path, eeg_subjects: list[int] = (), fsaverage_subjects: list[int] = (),
                      layout: str = LAYOUT_CURRENT, components: int = 250, legacy_components: int = 1000,
                      seed: int = 0, pregenerated_images: int = 0) -> Path:
    """``pregenerated_images`` > 0 (legacy layout) also writes pregenerated EEG responses, as
    ``synthetic.write_toolkit`` does for the fwRF."""
    nest_dir = Path(nest_dir)
    check_pregenerated(pregenerated_images, layout)
    weights_path = write_vit_weights(nest_dir, seed)
    features = reference_features(VIT_B_32.reference(VIT_B_32.network(weights_path)),
                                  synthetic_images(_CALIBRATION_IMAGES, 256, seed), VIT_B_32.transform())
    rng = np.random.default_rng(seed)
    if eeg_subjects:
        _write_eeg(nest_dir, list(eeg_subjects), layout, components, legacy_components, features, rng,
                   pregenerated_images, seed)
    if fsaverage_subjects:
        if layout == LAYOUT_LEGACY:
            raise ValueError("the fsaverage model exists only in the current toolkit layout")
        for subject in fsaverage_subjects:
            _write_fsaverage(nest_dir, subject, components, features, rng)
    return nest_dir


def _scaler(features: np.ndarray, rng) -> dict:
    """A StandardScaler calibrated on ``features`` [n, F] of the model's own backbone."""
    count = features.shape[1]
    mean = features.mean(axis=0).astype(np.float64) + rng.normal(0, 0.01, count)
    var = features.var(axis=0).astype(np.float64) * rng.uniform(0.8, 1.2, count) + 1e-3
    scale = np.sqrt(var)
    scale[var < 1e-2] = 1.0  # sklearn replaces near-zero scales by 1: readers must use scale_
    return {"mean_": mean, "var_": var, "scale_": scale, "n_features_in_": count,
            "n_samples_seen_": np.int64(16540)}


def _pca(rng, components: int, samples: int, features: int = VIT_B_32.features) -> dict:
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


def _regression(rng, outputs: int, components: int) -> dict:
    coef = rng.normal(0, 1 / np.sqrt(components), (outputs, components)).astype(np.float32)
    return {"coef_": coef, "intercept_": rng.normal(0, 0.1, outputs).astype(np.float32),
            "n_features_in_": components}


def _eeg_metadata(rng) -> dict:
    entry = catalog.model_entry(EEG)
    times = entry.times
    concepts = [f"concept_{i:05d}" for i in range(8)]
    return {
        "eeg": {"ch_names": list(entry.names("channels")),
                "times": np.round(times.start_s + times.step_s * np.arange(times.count), 6)},
        "encoding_models": {
            "correlation_averaged_repetitions": rng.uniform(-0.1, 0.6, (63, 140)),
            "correlation_single_repetitions": rng.uniform(-0.1, 0.4, (4, 63, 140)),
            "train_img_info": {"train_img_concepts": concepts, "train_img_concepts_THINGS": concepts,
                               "train_img_files": [c + ".jpg" for c in concepts]},
            "test_img_info": {"test_img_concepts": concepts[:2], "test_img_concepts_THINGS": concepts[:2],
                              "test_img_files": [c + ".jpg" for c in concepts[:2]]},
        },
    }


def _write_eeg(nest_dir, subjects, layout, components, legacy_components, features, rng,
               pregenerated_images=0, seed=0) -> None:
    outputs = 63 * 140
    if layout == LAYOUT_LEGACY:
        files = eeg_files(nest_dir, subjects[0], LAYOUT_LEGACY)
        _save(files["scaler"], _scaler(features, rng))
        _save(files["pca"], _pca(rng, legacy_components, 16540))
    for subject in subjects:
        files = eeg_files(nest_dir, subject, layout)
        regressions = {f"rep-{r}": _regression(rng, outputs, components) for r in range(1, 5)}
        if layout == LAYOUT_LEGACY:
            _save(files["regression"], regressions)
        else:
            _save(files["weights"], {"scaler_param": _scaler(features, rng),
                                     "pca_param": _pca(rng, components, 16540), "reg_param": regressions})
        metadata = _eeg_metadata(rng)
        _save(files["metadata"], metadata)
        if pregenerated_images:
            write_pregenerated(nest_dir, EEG, subject, None, (4, 63, 140), metadata, pregenerated_images,
                               np.random.default_rng([seed, subject, 1]))


def _write_fsaverage(nest_dir, subject, components, features, rng) -> None:
    vertices = catalog.model_entry(FSAVERAGE).vertices_per_hemisphere
    files = head_files(nest_dir, FSAVERAGE, subject)
    _save(files["weights"], {"scaler_param": _scaler(features, rng), "pca_param": _pca(rng, components, 9000),
                             "lh_reg_param": _regression(rng, vertices, components),
                             "rh_reg_param": _regression(rng, vertices, components)})
    names = [("OWFA" if name == "OVWFA" else name) for name in catalog.rois(FSAVERAGE)]  # NSD colour-table name

    def rois(left: bool):
        found = {}
        for index, name in enumerate(names):
            # every 7th ROI is empty in both hemispheres, every 5th (from 1) in the left one only
            empty = index % 7 == 3 or (left and index % 5 == 1)
            size = 0 if empty else int(rng.integers(200, 3000))
            start = int(rng.integers(0, vertices - size))
            found[name] = np.arange(start, start + size, dtype=np.int64)
        return found
    image_ids = np.sort(rng.permutation(73000)[:10000])
    per_vertex = {f"{h}_{key}": rng.uniform(0, 0.6, vertices).astype(np.float32)
                  for h in ("lh", "rh") for key in ("correlation", "r2", "noise_ceiling", "explained_variance")}
    _save(files["metadata"], {
        "fmri": {"lh_ncsnr": rng.uniform(0, 1, vertices).astype(np.float32),
                 "rh_ncsnr": rng.uniform(0, 1, vertices).astype(np.float32),
                 "lh_fsaverage_rois": rois(left=True), "rh_fsaverage_rois": rois(left=False)},
        "encoding_models": {"train_img_num": image_ids[:9000], "val_img_num": image_ids[9000:9485],
                            "test_img_num": image_ids[9485:], **per_vertex},
    })


def _save(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, content, allow_pickle=True)  # upstream's format: a pickled dict in a 0-d array
