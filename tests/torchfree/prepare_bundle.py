"""Run with torch: write a bundle and torch-reference responses for the torch-free tests.

Usage: python tests/torchfree/prepare_bundle.py WORK_DIR
Writes WORK_DIR/bundle and WORK_DIR/expected.npz (images and reference responses per ROI).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nest_rt_export import exporter, synthetic, toolkit
from nest_rt_export.fwrf_torch import FwrfReference

SUBJECT = 2
ROIS = ["V1", "FFA-1", "lateral"]


def main(work: Path) -> None:
    nest_dir = synthetic.write_toolkit(work / "toolkit", subjects=[SUBJECT], rois=ROIS, voxels=40, seed=5)
    exporter.export_bundle(nest_dir, work / "bundle", overwrite=True)
    arrays = {}
    for size in (227, 300):
        images = synthetic.synthetic_images(5, size, seed=size)
        arrays[f"images_{size}"] = images
        for roi in ROIS:
            files = toolkit.fwrf_files(nest_dir, SUBJECT, roi)
            reference = FwrfReference.from_checkpoints(
                [toolkit.load_checkpoint(p) for p in files["weights"]], SUBJECT)
            arrays[f"expected_{size}_{roi}"] = reference(images)
    np.savez(work / "expected.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
