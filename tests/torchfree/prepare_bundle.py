"""Run with torch: write a bundle and torch-reference responses for the torch-free tests.

Usage: python tests/torchfree/prepare_bundle.py WORK_DIR
Writes WORK_DIR/bundle (fwRF, EEG and fsaverage models) and WORK_DIR/expected.npz (images and
torch reference responses).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nest_rt_export import exporter, synthetic, synthetic_vit, toolkit
from nest_rt_export.fwrf_torch import FwrfReference
from nest_rt_export.vit_torch import VitFeatures, load_vit, reference_eeg, reference_features, reference_fsaverage

SUBJECT = 2
ROIS = ["V1", "FFA-1", "lateral"]


FSAVERAGE_ROI = "V1v"


def main(work: Path) -> None:
    nest_dir = synthetic.write_toolkit(work / "toolkit", subjects=[SUBJECT], rois=ROIS, voxels=40, seed=5)
    synthetic_vit.write_vit_toolkit(nest_dir, eeg_subjects=[SUBJECT], fsaverage_subjects=[SUBJECT],
                                    components=8, seed=5)
    vit_weights = nest_dir / synthetic_vit.VIT_WEIGHTS_NAME
    exporter.export_bundle(nest_dir, work / "bundle", vit_weights=vit_weights, overwrite=True)
    features = VitFeatures(load_vit(vit_weights))
    eeg_weights = toolkit.load_eeg_head(nest_dir, SUBJECT)
    fsaverage_weights = toolkit.load_npy_dict(toolkit.fsaverage_files(nest_dir, SUBJECT)["weights"])
    rois = toolkit.load_npy_dict(toolkit.fsaverage_files(nest_dir, SUBJECT)["metadata"])["fmri"]
    arrays = {}
    for size in (227, 256, 300):
        images = synthetic.synthetic_images(5, size, seed=size)
        arrays[f"images_{size}"] = images
        for roi in ROIS:
            files = toolkit.fwrf_files(nest_dir, SUBJECT, roi)
            reference = FwrfReference.from_checkpoints(
                [toolkit.load_checkpoint(p) for p in files["weights"]], SUBJECT)
            arrays[f"expected_{size}_{roi}"] = reference(images)
        vit_features = reference_features(features, images)
        arrays[f"expected_{size}_eeg"] = reference_eeg(vit_features, eeg_weights)
        lh, rh = reference_fsaverage(vit_features, fsaverage_weights,
                                     rois["lh_fsaverage_rois"][FSAVERAGE_ROI], rois["rh_fsaverage_rois"][FSAVERAGE_ROI])
        arrays[f"expected_{size}_fsaverage_lh"], arrays[f"expected_{size}_fsaverage_rh"] = lh, rh
    np.savez(work / "expected.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
