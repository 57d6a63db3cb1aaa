"""fwRF toolkits shaped independently of the project's own generator (export/synthetic.py).

The project's generator calibrates BatchNorm statistics so that every layer has unit-scale
activations and draws receptive fields of one width; code that passes only on such files is not
yet tested. This writer builds the checkpoints key by key from the file layout documented for
upstream's toolkit (its checkpoint and metadata files), without the exporter's torch modules, with
torch's default layer initialisation and weights whose scales the caller chooses: BatchNorm
statistics that do not match the activations, sharp or flat receptive fields, large readout
weights and offsets, float64 metadata. Real voxel counts (all 23 ROIs of subject 1) by default.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROI_VOXELS = {  # subject 1, NSD (upstream's model card)
    "V1": 1350, "V2": 1433, "V3": 1187, "hV4": 687, "EBA": 2971, "FBA-2": 430, "OFA": 355, "FFA-1": 484,
    "FFA-2": 310, "PPA": 1033, "RSC": 566, "OPA": 1611, "OWFA": 464, "VWFA-1": 773, "VWFA-2": 505,
    "mfs-words": 165, "early": 5917, "midventral": 986, "midlateral": 834, "midparietal": 950,
    "parietal": 3548, "lateral": 7799, "ventral": 7604}
SPLIT_ROIS = ("lateral", "ventral")
WEIGHTS = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/encoding_models_weights"
METADATA = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/metadata"

# (key, shape) of the encoder state dict in state_dict order; TrunkBlocks registered 4a, 5a, 6a, 4b, 5b, 6b
_CONVS = [("pre.conv1.0", (64, 3, 11, 11)), ("pre.conv2.0", (192, 64, 5, 5)), ("enc.conv3", (128, 192, 3, 3))]
_BLOCKS = [("conv4a", 128, 128), ("conv5a", 128, 128), ("conv6a", 128, 128), ("conv4b", 128, 128),
           ("conv5b", 128, 128), ("conv6b", 128, 64)]


@dataclass(frozen=True)
class Scales:
    """How far from unit scale the weights are drawn."""

    bn_variance: tuple[float, float] = (0.2, 5.0)   # running_var drawn uniformly in this range
    bn_mean: float = 0.5                             # running_mean ~ N(0, bn_mean)
    receptive_field: float = 4.0                     # rf logits ~ N(0, .): large = sharp fields
    readout_weight: float = 0.5                      # w ~ N(0, .)
    offset: float = 3.0                              # b ~ N(offset, 1)
    image_mean: tuple[float, float] = (0.3, 0.6)    # stim_mean per channel


def _conv(shape: tuple, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's default Conv2d initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both."""
    bound = 1 / math.sqrt(shape[1] * shape[2] * shape[3])
    weight = (torch.rand(shape, generator=generator) * 2 - 1) * bound
    return weight, (torch.rand(shape[0], generator=generator) * 2 - 1) * bound


def _batchnorm(channels: int, scales: Scales, generator: torch.Generator) -> dict[str, torch.Tensor]:
    low, high = scales.bn_variance
    return {"weight": 1 + 0.2 * torch.randn(channels, generator=generator),
            "bias": 0.2 * torch.randn(channels, generator=generator),
            "running_mean": scales.bn_mean * torch.randn(channels, generator=generator),
            "running_var": low + (high - low) * torch.rand(channels, generator=generator),
            "num_batches_tracked": torch.tensor(7031, dtype=torch.int64)}


def encoder_state(mu: np.ndarray, scales: Scales, generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"mu": torch.from_numpy(mu.astype(np.float32))}
    for key, shape in _CONVS:
        state[f"{key}.weight"], state[f"{key}.bias"] = _conv(shape, generator)
    for name, value in _batchnorm(192, scales, generator).items():
        state[f"enc.bn1.{name}"] = value
    for block, inputs, outputs in _BLOCKS:
        state[f"enc.{block}.conv1.weight"], state[f"enc.{block}.conv1.bias"] = _conv((outputs, inputs, 3, 3), generator)
        for name, value in _batchnorm(inputs, scales, generator).items():
            state[f"enc.{block}.bn1.{name}"] = value
    return state


def readout_state(voxels: int, scales: Scales, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {"rf0": scales.receptive_field * torch.randn(voxels, 27, 27, generator=generator),
            "rf1": scales.receptive_field * torch.randn(voxels, 25, 25, generator=generator),
            "rf2": scales.receptive_field * torch.randn(voxels, 13, 13, generator=generator),
            "w": scales.readout_weight * torch.randn(voxels, 768, generator=generator),
            "b": scales.offset + torch.randn(voxels, generator=generator)}


def write_toolkit(nest_dir: Path, subject: int = 1, rois: dict[str, int] | None = None,
                  scales: Scales = Scales(), seed: int = 0) -> Path:
    nest_dir = Path(nest_dir)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    (nest_dir / WEIGHTS).mkdir(parents=True, exist_ok=True)
    (nest_dir / METADATA).mkdir(parents=True, exist_ok=True)
    volume = (81, 104, 83)
    for roi, voxels in (rois or ROI_VOXELS).items():
        mask = np.zeros(volume, dtype=bool)
        mask.flat[rng.choice(mask.size, size=voxels, replace=False)] = True
        mu = rng.uniform(*scales.image_mean, size=(1, 3, 1, 1))
        first = math.ceil(voxels / 2)
        splits = [(1, first), (2, voxels - first)] if roi in SPLIT_ROIS else [(None, voxels)]
        for split, count in splits:
            best = {"enc": encoder_state(mu, scales, generator),
                    "fwrfs": {subject: readout_state(count, scales, generator)}}
            name = f"weights_sub-{subject:02d}_roi-{roi}" + (f"_split-{split}" if split else "") + ".pt"
            torch.save({"args.": argparse.Namespace(subjects="single", used_nsd_sub=subject, roi=roi,
                                                    split_roi=int(split is not None), split=split or 1,
                                                    trained=1, random_prefilter=1, train_prefilter=1,
                                                    use_prefilter=1, lr=1e-3, batch_size=128),
                        "best_params": best, "final_params": best,  # shared tensors: stored once
                        "trn_hist": [1.0], "hold_hist": [1.0], "hold_cc_hist": {subject: []},
                        "best_epoch": 42, "best_joint_cc_score": np.float64(0.3),
                        "subject_val_cc": {subject: np.zeros(count, np.float32)},
                        "stim_mean": mu.astype(np.float32), "betas_info": {subject: {"roi_mask_volume": mask}}},
                       nest_dir / WEIGHTS / name)
        ncsnr = rng.uniform(0, 1.5, voxels)
        noise_ceiling = np.maximum(ncsnr ** 2 / (ncsnr ** 2 + 1 / 3), 1e-14)
        r2 = rng.uniform(0, 0.4, voxels)
        np.save(nest_dir / METADATA / f"metadata_sub-{subject:02d}_roi-{roi}.npy",
                {"fmri": {"ncsnr": ncsnr, "roi_mask_volume": mask, "fmri_affine": np.diag([1.8, 1.8, 1.8, 1.0])},
                 "encoding_models": {"r2": r2, "noise_ceiling": noise_ceiling,
                                     "explained_variance": np.minimum(100, 100 * r2 / noise_ceiling),
                                     "train_img_num": rng.permutation(73000)[:9000],
                                     "val_img_num": np.arange(485), "test_img_num": np.arange(515)}},
                allow_pickle=True)
    return nest_dir
