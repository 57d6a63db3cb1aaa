"""A demo bundle built without torch: fwRF models with random weights in the real shapes, written
by the exporter's own graph builder (numpy and onnx only), for trying the runtime on a machine
without the 5 GB torch install (``nest-rt demo`` when torch is missing).

Nothing checks these graphs against a torch reference (there is none without torch): their
parity records are empty and bundle.json says where they came from. They run exactly like
exported graphs, but their responses mean nothing; for real or parity-checked bundles use
``nest-rt export`` (or ``nest-rt demo`` with the export extra installed).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nest_rt import catalog

from .exporter import base_tools, new_manifest, staged_bundle
from .fwrf_export import FWRF, write_fwrf_model

SOURCE = "synthetic demo bundle: random weights, built without torch, not checked against a torch reference"
VOLUME_SHAPE = (81, 104, 83)
# the encoder as stored in a checkpoint's best_params['enc'] (upstream's checkpoint layout): convolutions
# (out, in, k, k), then the BatchNorm before each of the last seven
_CONVS = {"pre.conv1.0": (64, 3, 11, 11), "pre.conv2.0": (192, 64, 5, 5), "enc.conv3": (128, 192, 3, 3),
          **{f"enc.conv{block}.conv1": (64 if block == "6b" else 128, 128, 3, 3)
             for block in ("4a", "5a", "6a", "4b", "5b", "6b")}}
_BATCHNORMS = {"enc.bn1": 192, **{f"enc.conv{block}.bn1": 128 for block in ("4a", "5a", "6a", "4b", "5b", "6b")}}


def write_demo_bundle(out: str | Path, rois: list[str], subject: int = 1, seed: int = 0) -> Path:
    """A bundle with fwRF models of ``subject`` for ``rois`` (subject 1's real voxel counts)."""
    out = Path(out).resolve()
    voxels = catalog.model_entry(FWRF).voxels_subject_1
    manifest = new_manifest({"nest_dir": None, "layout": SOURCE}, base_tools())
    with staged_bundle(out, manifest) as staging:
        for roi in rois:
            rng = np.random.default_rng([seed, subject, catalog.rois(FWRF).index(roi)])
            count = voxels[catalog.validate_roi(FWRF, roi)]
            splits = [math.ceil(count / 2), count // 2] if roi in catalog.model_entry(FWRF).split_rois else [count]
            parts = [(_encoder(rng), _readout(size, rng)) for size in splits]
            write_fwrf_model(staging, manifest, subject, roi, parts, _metadata(count, rng),
                             provenance={"sources": [], "note": SOURCE}, check=None)
    return out


def _encoder(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-initialised convolutions and neutral BatchNorms: activations keep their scale layer
    after layer, so responses vary across images without any training."""
    state = {"mu": rng.uniform(0.4, 0.5, (1, 3, 1, 1)).astype(np.float32)}
    for key, shape in _CONVS.items():
        state[f"{key}.weight"] = rng.normal(0, math.sqrt(2 / np.prod(shape[1:])), shape).astype(np.float32)
        state[f"{key}.bias"] = rng.normal(0, 0.05, shape[0]).astype(np.float32)
    for key, channels in _BATCHNORMS.items():
        state.update({f"{key}.weight": np.ones(channels, np.float32), f"{key}.bias": np.zeros(channels, np.float32),
                      f"{key}.running_mean": np.zeros(channels, np.float32),
                      f"{key}.running_var": np.ones(channels, np.float32)})
    return state


def _readout(voxels: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    shapes = {"rf0": (voxels, 27, 27), "rf1": (voxels, 25, 25), "rf2": (voxels, 13, 13)}
    state = {key: rng.normal(0, 1.5, shape).astype(np.float32) for key, shape in shapes.items()}
    state["w"] = rng.normal(0, 4 / math.sqrt(768), (voxels, 768)).astype(np.float32)
    state["b"] = rng.normal(0, 0.1, voxels).astype(np.float32)
    return state


def _metadata(voxels: int, rng: np.random.Generator) -> dict:
    """The keys of upstream's fwRF metadata files, with random values."""
    mask = np.zeros(VOLUME_SHAPE, dtype=bool)
    mask.flat[np.sort(rng.choice(mask.size, size=voxels, replace=False))] = True
    ncsnr = rng.uniform(0, 1, voxels)
    noise_ceiling = np.maximum(ncsnr ** 2 / (ncsnr ** 2 + 1 / 3), 1e-14)
    r2 = np.clip(rng.uniform(-0.2, 0.7, voxels), 0, None) ** 2
    images = rng.permutation(73000)
    return {"fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask, "fmri_affine": np.diag([1.8, 1.8, 1.8, 1.0])},
            "encoding_models": {"r2": r2, "noise_ceiling": noise_ceiling,
                                "explained_variance": np.minimum(100, 100 * r2 / noise_ceiling),
                                "train_img_num": images[:9000], "val_img_num": images[9000:9485],
                                "test_img_num": images[9485:10000]}}
