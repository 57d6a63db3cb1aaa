"""Run with torch: write a bundle and torch-reference responses for the torch-free tests.

Usage: python tests/torchfree/prepare_bundle.py WORK_DIR
Writes WORK_DIR/bundle (fwRF, EEG, fsaverage, MEG, Utah-array and untrained-AlexNet EEG models;
both backbones also in int8 and fp16), WORK_DIR/variants (the untrained-AlexNet EEG model alone,
--portable --self-contained: the smallest backbone, no weights file) and WORK_DIR/expected.npz
(images and torch reference responses; MEG, Utah array and AlexNet from the upstream-style
reference of tests/berg_reference.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from nest_rt_export import exporter, synthetic, synthetic_berg, synthetic_vit, toolkit
from nest_rt_export.fwrf_torch import FwrfReference

SUBJECT = 2
ROIS = ["V1", "FFA-1", "lateral"]
FSAVERAGE_ROI = "V1v"
MEG_SELECTION = {"region": ["Occipital"]}
TVSD_SELECTION = {"roi": ["V4"]}
ALEXNET_SELECTION = {"channels": ["O1", "Oz", "O2"]}
VARIANTS_MODEL = "eeg-things_eeg_2-alexnet_untrained"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from berg_reference import (alexnet_extractor, upstream_alexnet,  # noqa: E402  (tests/, found through the path above)
                            upstream_alexnet_features, upstream_responses, vit_extractor, vit_features)
from head_responses import reference_eeg, reference_fsaverage  # noqa: E402


def main(work: Path) -> None:
    nest_dir = synthetic.write_toolkit(work / "toolkit", subjects=[SUBJECT], rois=ROIS, voxels=40, seed=5)
    synthetic_vit.write_vit_toolkit(nest_dir, eeg_subjects=[SUBJECT], fsaverage_subjects=[SUBJECT],
                                    components=8, seed=5)
    # the same seed writes the same ViT weights as write_vit_toolkit above
    synthetic_berg.write_berg_toolkit(nest_dir, meg_subjects=[SUBJECT], meg_variants=("full",),
                                      tvsd_subjects=["F"], alexnet_eeg_subjects=[SUBJECT],
                                      alexnet_backbones=("alexnet_untrained",), components=8, seed=5)
    vit_weights = nest_dir / synthetic_vit.VIT_WEIGHTS_NAME
    # every graph an export can write, for test_every_graph_loads.py (on the oldest onnxruntime too)
    exporter.export_bundle(nest_dir, work / "bundle", vit_weights=vit_weights, precisions=("int8", "fp16"),
                           overwrite=True)
    exporter.export_bundle(nest_dir, work / "variants", models=[VARIANTS_MODEL], portable=True, self_contained=True,
                           overwrite=True)
    features = vit_extractor(vit_weights)
    eeg_weights = toolkit.load_head(nest_dir, "eeg-things_eeg_2-vit_b_32", SUBJECT)[0]
    fsaverage_weights = toolkit.load_npy_dict(toolkit.head_files(nest_dir, "fmri-nsd_fsaverage-vit_b_32", SUBJECT)["weights"])
    rois = toolkit.load_npy_dict(toolkit.head_files(nest_dir, "fmri-nsd_fsaverage-vit_b_32", SUBJECT)["metadata"])["fmri"]
    untrained = alexnet_extractor(upstream_alexnet(None))
    arrays = {}
    for size in (227, 256, 300):
        images = synthetic.synthetic_images(5, size, seed=size)
        arrays[f"images_{size}"] = images
        for roi in ROIS:
            files = toolkit.fwrf_files(nest_dir, SUBJECT, roi)
            reference = FwrfReference.from_checkpoints(
                [toolkit.load_checkpoint(p) for p in files["weights"]], SUBJECT)
            arrays[f"expected_{size}_{roi}"] = reference(images)
        on_vit = vit_features(features, images)
        arrays[f"expected_{size}_eeg"] = reference_eeg(on_vit, eeg_weights)
        lh, rh = reference_fsaverage(on_vit, fsaverage_weights,
                                     rois["lh_fsaverage_rois"][FSAVERAGE_ROI], rois["rh_fsaverage_rois"][FSAVERAGE_ROI])
        arrays[f"expected_{size}_fsaverage_lh"], arrays[f"expected_{size}_fsaverage_rh"] = lh, rh
        # 8 images: over 5 the per-output correlation of a resized size is too noisy for 0.9999
        arrays[f"berg_images_{size}"] = berg_images = synthetic.synthetic_images(8, size, seed=size + 1)
        berg_features = vit_features(features, berg_images)
        arrays[f"expected_{size}_meg"] = upstream_responses(nest_dir, "meg-things_meg_1-vit_b_32", SUBJECT,
                                                            berg_features, MEG_SELECTION)
        arrays[f"expected_{size}_tvsd"] = upstream_responses(nest_dir, "utah_array-tvsd-vit_b_32", "F",
                                                             berg_features, TVSD_SELECTION)
        arrays[f"expected_{size}_alexnet_untrained"] = upstream_responses(
            nest_dir, "eeg-things_eeg_2-alexnet_untrained", SUBJECT,
            upstream_alexnet_features(untrained, berg_images), ALEXNET_SELECTION)
    np.savez(work / "expected.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
