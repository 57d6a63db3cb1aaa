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

from nest_rt import catalog

from .backbones.vit_b_32 import VIT_B_32
from .synthetic import check_pregenerated, write_pregenerated
from .synthetic_linear import calibration_features, random_pca, random_regression, random_scaler, save_npy_dict
from .toolkit import LAYOUT_CURRENT, LAYOUT_LEGACY, eeg_files, head_files

VIT_WEIGHTS_NAME = VIT_B_32.random_weights_name  # vit_b_32_synthetic.pth
EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"


def write_vit_weights(nest_dir: Path, seed: int = 0) -> Path:
    """A randomly initialised torchvision vit_b_32 state dict (what --vit-weights expects)."""
    return VIT_B_32.write_random_weights(nest_dir, seed)


def write_vit_toolkit(nest_dir: Path, eeg_subjects: list[int] = (), fsaverage_subjects: list[int] = (),
                      layout: str = LAYOUT_CURRENT, components: int = 250, legacy_components: int = 1000,
                      seed: int = 0, pregenerated_images: int = 0) -> Path:
    """``pregenerated_images`` > 0 (legacy layout) also writes pregenerated EEG responses, as
    ``synthetic.write_toolkit`` does for the fwRF."""
    nest_dir = Path(nest_dir)
    check_pregenerated(pregenerated_images, layout)
    weights_path = write_vit_weights(nest_dir, seed)
    features = calibration_features(VIT_B_32, weights_path, seed)
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
        save_npy_dict(files["scaler"], random_scaler(features, rng))
        save_npy_dict(files["pca"], random_pca(rng, legacy_components, 16540, VIT_B_32.features))
    for subject in subjects:
        files = eeg_files(nest_dir, subject, layout)
        regressions = {f"rep-{r}": random_regression(rng, outputs, components) for r in range(1, 5)}
        if layout == LAYOUT_LEGACY:
            save_npy_dict(files["regression"], regressions)
        else:
            save_npy_dict(files["weights"], {"scaler_param": random_scaler(features, rng),
                                             "pca_param": random_pca(rng, components, 16540, VIT_B_32.features),
                                             "reg_param": regressions})
        metadata = _eeg_metadata(rng)
        save_npy_dict(files["metadata"], metadata)
        if pregenerated_images:
            write_pregenerated(nest_dir, EEG, subject, None, (4, 63, 140), metadata, pregenerated_images,
                               np.random.default_rng([seed, subject, 1]))


def _write_fsaverage(nest_dir, subject, components, features, rng) -> None:
    vertices = catalog.model_entry(FSAVERAGE).vertices_per_hemisphere
    files = head_files(nest_dir, FSAVERAGE, subject)
    save_npy_dict(files["weights"], {"scaler_param": random_scaler(features, rng),
                                     "pca_param": random_pca(rng, components, 9000, VIT_B_32.features),
                                     "lh_reg_param": random_regression(rng, vertices, components),
                                     "rh_reg_param": random_regression(rng, vertices, components)})
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
    save_npy_dict(files["metadata"], {
        "fmri": {"lh_ncsnr": rng.uniform(0, 1, vertices).astype(np.float32),
                 "rh_ncsnr": rng.uniform(0, 1, vertices).astype(np.float32),
                 "lh_fsaverage_rois": rois(left=True), "rh_fsaverage_rois": rois(left=False)},
        "encoding_models": {"train_img_num": image_ids[:9000], "val_img_num": image_ids[9000:9485],
                            "test_img_num": image_ids[9485:], **per_vertex},
    })
