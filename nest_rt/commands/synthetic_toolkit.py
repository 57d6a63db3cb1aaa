"""nest-rt synthetic-toolkit: a toolkit with random weights in the upstream file formats."""
from __future__ import annotations

import importlib
from pathlib import Path

from .. import catalog
from .export_extra import export_stage

NAME = "synthetic-toolkit"
HELP = "write a random-weight toolkit"
# The families --models offers, by backbone: name -> the model id whose subjects it writes. The
# writers live in the export package (torch), which --help must not load, so the names are here.
VIT_FAMILIES = {"eeg": "eeg-things_eeg_2-vit_b_32", "fsaverage": "fmri-nsd_fsaverage-vit_b_32"}
ALEXNET_FAMILIES = {"eeg-alexnet": "eeg-things_eeg_2-alexnet", "fsaverage-alexnet": "fmri-nsd_fsaverage-alexnet"}
FAMILIES = ["fwrf", *VIT_FAMILIES, *ALEXNET_FAMILIES]


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="toolkit directory to create")
    parser.add_argument("--models", nargs="+", choices=FAMILIES, default=["fwrf"],
                        help="families to write (default fwrf); eeg and fsaverage also write random ViT-B/32 "
                             "weights (vit_b_32_synthetic.pth: pass it to export --vit-weights) and take "
                             "about 0.5 and 0.8 GB per subject at the real 250 components; the AlexNet ones "
                             "(BERG's current format, trained and untrained) write random AlexNet weights "
                             "(alexnet_synthetic.pth: export --alexnet-weights)")
    parser.add_argument("--components", type=int, default=250, help="PCA components of the ViT heads (real: 250)")
    parser.add_argument("--subjects", type=int, nargs="+", help="default: every subject of each model")
    parser.add_argument("--rois", nargs="+", help="default: all 23")
    parser.add_argument("--voxels", type=int, help="voxels per ROI (default: subject 1's real counts)")
    parser.add_argument("--layout", choices=["current", "legacy"], default="current")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pregenerated-images", type=int, default=0,
                        help="legacy layout: also write upstream-style pregenerated responses for this many images")


def run(args) -> None:
    _, synthetic = export_stage()
    if "fwrf" in args.models:
        synthetic.write_toolkit(args.out, subjects=args.subjects, rois=args.rois, voxels=args.voxels,
                                seed=args.seed, layout=args.layout, pregenerated_images=args.pregenerated_images)
    vit = _chosen_subjects(args, VIT_FAMILIES)
    if vit:
        synthetic_vit = importlib.import_module("nest_rt_export.synthetic_vit")
        synthetic_vit.write_vit_toolkit(args.out, eeg_subjects=vit.get("eeg", []),
                                        fsaverage_subjects=vit.get("fsaverage", []), layout=args.layout,
                                        components=args.components, seed=args.seed,
                                        pregenerated_images=args.pregenerated_images)
        print(f"random ViT-B/32 weights: {args.out / synthetic_vit.VIT_WEIGHTS_NAME} (export with --vit-weights)")
    alexnet = _chosen_subjects(args, ALEXNET_FAMILIES)
    if alexnet:
        synthetic_berg = importlib.import_module("nest_rt_export.synthetic_berg")
        synthetic_berg.write_berg_toolkit(args.out, alexnet_eeg_subjects=alexnet.get("eeg-alexnet", []),
                                          alexnet_fsaverage_subjects=alexnet.get("fsaverage-alexnet", []),
                                          components=args.components, seed=args.seed)
        print(f"random AlexNet weights: {args.out / synthetic_berg.ALEXNET_WEIGHTS_NAME} "
              "(export with --alexnet-weights)")
    print(f"synthetic toolkit written to {args.out}")


def _chosen_subjects(args, families: dict[str, str]) -> dict[str, list]:
    """For each family in --models (name -> model id): --subjects that the model has (default all)."""
    chosen = {}
    for name, model_id in families.items():
        if name in args.models:
            known = catalog.subjects(model_id)
            chosen[name] = [s for s in (args.subjects or known) if s in known]
    return chosen
