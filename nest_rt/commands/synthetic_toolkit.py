"""nest-rt synthetic-toolkit: a toolkit with random weights in the upstream file formats.

The models it offers are the catalog's: every model's short name (its manifest ``alias``). The
fwRF has its own writer (export/synthetic.py); every linear model is written from its manifest
entry (export/synthetic_linear.py), with random stand-in weights drawn by its backbone's file.
In the legacy layout, only the models that existed then (those with a ``legacy`` triple) are
written, by their own writers. The choices come from the manifest (JSON): --help loads no torch.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from .. import catalog
from .export_extra import export_stage

NAME = "synthetic-toolkit"
HELP = "write a random-weight toolkit"


def model_aliases() -> dict[str, str]:
    """Short name -> model id, for every model of the catalog, in its order."""
    return {entry.alias: model_id for model_id, entry in catalog.models().items()}


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="toolkit directory to create")
    parser.add_argument("--models", nargs="+", choices=list(model_aliases()), default=["fwrf"], metavar="MODEL",
                        help=f"models to write, by short name (default fwrf): {', '.join(model_aliases())}. "
                             "Each linear model also writes random weights for its backbone "
                             "(BACKBONE_synthetic.pth beside the toolkit: pass it to export --weights "
                             "BACKBONE=PATH); at the real 250 components a subject takes about 0.5 GB (eeg) to "
                             "0.8 GB (fsaverage)")
    parser.add_argument("--components", type=int, default=250, help="PCA components of the linear heads (real: 250)")
    parser.add_argument("--subjects", type=_subject, nargs="+",
                        help="default: every subject of each model (TVSD's are N and F)")
    parser.add_argument("--rois", nargs="+", help="fwRF ROIs (default: all 23)")
    parser.add_argument("--voxels", type=int, help="fwRF voxels per ROI (default: subject 1's real counts)")
    parser.add_argument("--layout", choices=["current", "legacy"], default="current")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pregenerated-images", type=int, default=0,
                        help="legacy layout: also write upstream-style pregenerated responses for this many images")


def _subject(text: str) -> int | str:
    """A subject as the catalog lists it: a number, or a name (TVSD's monkeys N and F)."""
    return int(text) if text.isdigit() else text


def run(args) -> None:
    chosen = _chosen_models(args)
    fwrf = [model_id for model_id in chosen if not catalog.is_linear(model_id)]
    linear = {model_id: subjects for model_id, subjects in chosen.items() if model_id not in fwrf}
    if args.layout == "legacy":
        _check_legacy(linear)  # before torch is loaded and anything written
    _, synthetic = export_stage()
    synthetic.check_pregenerated(args.pregenerated_images, args.layout)
    for model_id in fwrf:  # its writer refuses --subjects it lacks when it has none of them
        synthetic.write_toolkit(args.out, subjects=chosen[model_id] or args.subjects, rois=args.rois,
                                voxels=args.voxels, seed=args.seed, layout=args.layout,
                                pregenerated_images=args.pregenerated_images)
    if args.layout == "legacy":
        weights = _write_legacy(args, linear)
    else:
        synthetic_linear = importlib.import_module("nest_rt_export.synthetic_linear")
        weights = synthetic_linear.write_linear_models(args.out, linear, components=args.components, seed=args.seed)
    backbones = importlib.import_module("nest_rt_export.backbones")
    for name, path in weights.items():
        if path is not None:  # None: a backbone that takes no weights file (the untrained AlexNet)
            print(f"random {backbones.get(name).title} weights: {path} (export with --weights {name}={path})")
    print(f"synthetic toolkit written to {args.out}")


def _chosen_models(args) -> dict[str, list]:
    """Model id -> the --subjects it has (default: all of them), for each of --models. The fwRF's
    subjects are its writer's to check; a linear model that has none of --subjects is refused."""
    aliases = model_aliases()
    chosen = {}
    for alias in dict.fromkeys(args.models):
        model_id = aliases[alias]
        known = catalog.subjects(model_id)
        chosen[model_id] = [s for s in (args.subjects or known) if s in known]
        if not chosen[model_id] and catalog.is_linear(model_id):
            raise ValueError(f"--subjects {' '.join(map(str, args.subjects))}: {alias} has the subjects "
                             f"{', '.join(map(str, known))}")
    return chosen


def _check_legacy(linear: dict[str, list]) -> None:
    """Refuses the models that the legacy layout never held (those without a ``legacy`` triple)."""
    legacy = [model_id for model_id, entry in catalog.models().items() if entry.legacy]
    for model_id in linear:
        if model_id not in legacy:
            raise ValueError(f"--layout legacy: {catalog.model_entry(model_id).alias} exists only in the current "
                             f"layout; the legacy one holds {', '.join(_aliases_of(legacy))}")


def _write_legacy(args, linear: dict[str, list]) -> dict[str, Path]:
    """The legacy layout's linear model (NEST's EEG), by its own writer (the manifest's ``head``
    describes the current layout's files only)."""
    if not linear:
        return {}
    (model_id, subjects), = linear.items()  # the legacy layout has one linear model
    synthetic_vit = importlib.import_module("nest_rt_export.synthetic_vit")
    synthetic_vit.write_vit_toolkit(args.out, eeg_subjects=subjects, layout="legacy", components=args.components,
                                    seed=args.seed, pregenerated_images=args.pregenerated_images)
    return {catalog.model_entry(model_id).backbone: args.out / synthetic_vit.VIT_WEIGHTS_NAME}


def _aliases_of(model_ids: list[str]) -> list[str]:
    return [catalog.model_entry(model_id).alias for model_id in model_ids]
