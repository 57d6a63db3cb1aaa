"""Synthetic NEST toolkits: random weights in exactly the upstream file formats and sizes.

Real toolkits are many GB and cannot be downloaded everywhere, so tests, the demo and the
benchmarks build their own. The files written here follow upstream's files key by key
(``'args.'`` Namespace, ``best_params``/``final_params``, ``stim_mean``, ``betas_info``, ...), so
the exporter reads them through the same code path as a real toolkit.

Random weights are made to behave: BatchNorm running statistics are measured on images
passed through the random encoder (as a trained network's would be), so every layer has
activations of unit scale and the responses are finite, non-constant and of order one.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from nest_rt import catalog, response_files
from nest_rt.demo import synthetic_images  # noqa: F401  (numpy and Pillow only; the export's checks use it)

from .fwrf_torch import FwrfEncoder, FwrfReadout
from .toolkit import LAYOUT_CURRENT, LAYOUT_LEGACY, fwrf_files

VOLUME_SHAPE = (81, 104, 83)  # subject 1's functional volume
_CALIBRATION_IMAGES = 8


def voxel_counts(voxels: int | None) -> dict[str, int]:
    """Voxels per ROI: subject 1's real counts, or ``voxels`` for every ROI."""
    real = catalog.fwrf_model().voxels_subject_1
    return dict(real) if voxels is None else {roi: int(voxels) for roi in real}


def write_toolkit(nest_dir: Path, subjects: list[int] | None = None, rois: list[str] | None = None,
                  voxels: int | None = None, seed: int = 0, layout: str = LAYOUT_CURRENT,
                  pregenerated_images: int = 0) -> Path:
    """Write a synthetic toolkit with fwRF models for ``subjects`` x ``rois``; returns nest_dir.

    ``pregenerated_images`` > 0 (legacy layout only, as upstream) also writes pregenerated
    responses to that many images per image set (upstream: 73,000 / 50,000 / 26,107).
    """
    nest_dir = Path(nest_dir)
    entry = catalog.fwrf_model()
    subjects = [catalog.validate_subject(entry.id, s) for s in (subjects or entry.subjects)]
    rois = [catalog.validate_roi(entry.id, r) for r in (rois or entry.rois)]
    counts = voxel_counts(voxels)
    if layout not in (LAYOUT_CURRENT, LAYOUT_LEGACY):
        raise ValueError(f"layout must be {LAYOUT_CURRENT!r} or {LAYOUT_LEGACY!r}, got {layout!r}")
    check_pregenerated(pregenerated_images, layout)
    _write_layout_markers(nest_dir, layout)
    for subject in subjects:
        rng = np.random.default_rng([seed, subject])
        stim_mean = rng.uniform(0.35, 0.55, size=(1, 3, 1, 1)).astype(np.float32)
        base = _calibrated_encoder(stim_mean, seed=seed * 1000 + subject)
        # its own generator, so that the weights are the same with or without pregenerated files
        pregenerated_rng = np.random.default_rng([seed, subject, 1])
        for roi in rois:
            metadata = _write_fwrf_roi(nest_dir, subject, roi, counts[roi], base, stim_mean, rng,
                                       split=roi in entry.split_rois)
            if pregenerated_images:
                write_pregenerated(nest_dir, entry.id, subject, roi, (counts[roi],), metadata,
                                   pregenerated_images, pregenerated_rng)
    return nest_dir


def check_pregenerated(images: int, layout: str) -> None:
    if isinstance(images, bool) or not isinstance(images, int) or images < 0:
        raise ValueError(f"pregenerated_images must be an int >= 0, got {images!r}")
    if images and layout != LAYOUT_LEGACY:
        raise ValueError("pregenerated responses exist only in the legacy toolkit layout (layout='legacy')")


def write_pregenerated(nest_dir: Path, model_id: str, subject: int, roi: str | None,
                       response_shape: tuple[int, ...], model_metadata: dict, images: int,
                       rng: np.random.Generator) -> None:
    """Upstream's pregenerated responses of one model for each image set: an HDF5 file with
    random float32 responses [images, *response_shape] and a pickled metadata dict.

    What upstream's metadata files hold is unverified. This writes a
    plausible guess: the model's own metadata plus the image set's name and, per response
    row, the index of its image in that set.
    """
    import h5py  # the export stage needs it only for these synthetic files
    folder = Path(nest_dir) / response_files.PREGENERATED_DIR / response_files.model_dir(model_id)
    stem = response_files.file_stem(subject, roi)
    for imageset in response_files.UPSTREAM_IMAGESETS:
        target = folder / f"imageset-{imageset}"
        target.mkdir(parents=True, exist_ok=True)
        values = rng.normal(0, 1, (images, *response_shape)).astype(np.float32)
        with h5py.File(target / response_files.responses_file(stem, ".h5"), "w") as handle:
            handle.create_dataset(response_files.DATASET, data=values)
        metadata = {**model_metadata, "imageset": imageset, "image_index": np.arange(images)}
        np.save(target / response_files.metadata_file(stem, ".npy"), metadata, allow_pickle=True)


def _write_layout_markers(nest_dir: Path, layout: str) -> None:
    nest_dir.mkdir(parents=True, exist_ok=True)
    if layout == LAYOUT_LEGACY:
        (nest_dir / response_files.PREGENERATED_DIR).mkdir(exist_ok=True)
    else:
        for name in ("LICENSE.txt", "TERMS.txt"):
            (nest_dir / name).write_text("Synthetic NEST toolkit written by nest-rt: random weights, "
                                         "not a trained model.\n")


def _calibrated_encoder(stim_mean: np.ndarray, seed: int) -> FwrfEncoder:
    """A random encoder whose BatchNorm statistics match its own activations."""
    torch.manual_seed(seed)
    encoder = FwrfEncoder(stim_mean)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            torch.nn.init.normal_(module.bias, std=0.05)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the calibration batch
            torch.nn.init.normal_(module.weight, mean=1.0, std=0.1)
            torch.nn.init.normal_(module.bias, std=0.1)
    images = synthetic_images(_CALIBRATION_IMAGES, 227, seed=seed)
    encoder.train()
    with torch.no_grad():
        encoder(torch.from_numpy(images).float() / 255)
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.25
    return encoder.eval()


def _perturbed_state(base: FwrfEncoder, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """The base encoder's weights with 5 % multiplicative noise: distinct per ROI and split."""
    state = {}
    for key, value in base.state_dict().items():
        if value.is_floating_point() and key.endswith("weight") and value.ndim == 4:
            noise = torch.from_numpy(rng.normal(1.0, 0.05, size=value.shape).astype(np.float32))
            value = value * noise
        state[key] = value.clone()
    return state


def _readout_state(voxels: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    shapes = {"rf0": (voxels, 27, 27), "rf1": (voxels, 25, 25), "rf2": (voxels, 13, 13)}
    state = {key: torch.from_numpy(rng.normal(0, 1.5, size=shape).astype(np.float32))
             for key, shape in shapes.items()}
    state["w"] = torch.from_numpy(rng.normal(0, 4 / math.sqrt(768), size=(voxels, 768)).astype(np.float32))
    state["b"] = torch.from_numpy(rng.normal(0, 0.1, size=(voxels,)).astype(np.float32))
    assert set(state) == set(FwrfReadout(1).state_dict())
    return state


def _write_fwrf_roi(nest_dir: Path, subject: int, roi: str, voxels: int, base: FwrfEncoder,
                    stim_mean: np.ndarray, rng: np.random.Generator, split: bool) -> dict:
    files = fwrf_files(nest_dir, subject, roi)
    mask = np.zeros(VOLUME_SHAPE, dtype=bool)
    mask.flat[np.sort(rng.choice(mask.size, size=voxels, replace=False))] = True
    betas_info = _betas_info(mask, rng)
    first_split = math.ceil(voxels / 2)
    sizes = [first_split, voxels - first_split] if split else [voxels]
    for index, (path, size) in enumerate(zip(files["weights"], sizes), start=1):
        path.parent.mkdir(parents=True, exist_ok=True)
        best = {"enc": _perturbed_state(base, rng), "fwrfs": {subject: _readout_state(size, rng)}}
        # Real splits share the subject's image mean (inferred); a small offset per split makes
        # the tests notice if one split's mu were used for the other (upstream's Q4 aliasing).
        split_mean = stim_mean + np.float32(0.01 * (index - 1))
        best["enc"]["mu"] = torch.from_numpy(split_mean.copy())
        final = {"enc": {k: v * 1.001 if v.is_floating_point() else v for k, v in best["enc"].items()},
                 "fwrfs": {subject: {k: v * 1.001 for k, v in best["fwrfs"][subject].items()}}}
        torch.save({
            "args.": _training_args(subject, roi, split, index, nest_dir),
            "best_params": best,
            "final_params": final,
            "trn_hist": [float(x) for x in rng.uniform(0.5, 1.0, 95)],
            "hold_hist": [float(x) for x in rng.uniform(0.5, 1.0, 95)],
            "hold_cc_hist": {subject: [rng.uniform(-0.1, 0.6, size).astype(np.float32)
                                       for _ in range(3)]},
            "best_epoch": int(rng.integers(1, 95)),
            "best_joint_cc_score": np.float64(rng.uniform(0.2, 0.5)),
            "subject_val_cc": {subject: rng.uniform(-0.1, 0.7, size).astype(np.float32)},
            "stim_mean": split_mean.copy(),
            "betas_info": {subject: betas_info},
        }, path)
    return _write_fwrf_metadata(files["metadata"], mask, betas_info, rng)


def _training_args(subject: int, roi: str, split: bool, index: int, nest_dir: Path):
    return argparse.Namespace(
        subjects="single", used_nsd_sub=subject, roi=roi, split_roi=int(split), split=index,
        trained=1, random_prefilter=1, train_prefilter=1, use_prefilter=1, train_phases=1,
        epochs_phase_1=75, epochs_phase_2=10, epochs_phase_3=10, lr=1e-3, weight_decay=0.0,
        batch_size=128, nest_dir=str(nest_dir))


def _betas_info(mask: np.ndarray, rng: np.random.Generator) -> dict:
    voxels = int(mask.sum())
    image_ids = rng.permutation(73000)
    return {
        "volume_shape": VOLUME_SHAPE,
        "roi_mask_volume": mask,
        "fmri_affine": np.diag([1.8, 1.8, 1.8, 1.0]),
        "ncsnr": rng.uniform(0.0, 1.0, voxels),
        "masterordering": rng.integers(0, 10000, 30000),
        "subjectim": rng.integers(0, 73000, (8, 10000)),
        "img_presentation_order": rng.integers(0, 10000, 30000),
        "train_img_num": image_ids[:9000], "train_img_idx": np.arange(9000),
        "val_img_num": image_ids[9000:9485], "val_img_idx": np.arange(485),
        "test_img_num": image_ids[9485:10000], "test_img_idx": np.arange(515),
    }


def _write_fwrf_metadata(path: Path, mask: np.ndarray, betas_info: dict,
                         rng: np.random.Generator) -> dict:
    ncsnr = betas_info["ncsnr"]
    voxels = ncsnr.size
    r2 = np.clip(rng.uniform(-0.2, 0.7, voxels), 0, None) ** 2
    noise_ceiling = ncsnr ** 2 / (ncsnr ** 2 + 1 / 3)
    noise_ceiling[noise_ceiling == 0] = 1e-14
    metadata = {
        "fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask, "fmri_affine": betas_info["fmri_affine"]},
        "encoding_models": {
            "r2": r2, "noise_ceiling": noise_ceiling,
            "explained_variance": np.minimum(100, 100 * r2 / noise_ceiling),
            "train_img_num": betas_info["train_img_num"],
            "val_img_num": betas_info["val_img_num"],
            "test_img_num": betas_info["test_img_num"],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, metadata, allow_pickle=True)
    return metadata
