"""The ``nest-rt`` command line.

Subcommands:
  demo               build a synthetic toolkit (or use --nest-dir), export it, encode images
  synthetic-toolkit  write a toolkit with random weights in the upstream file formats
  export             convert a NEST toolkit directory into an ONNX bundle
User errors end with exit code 2 and a one-line reason on stderr, without a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import catalog
from .errors import NESTError


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args) or 0
    except _ExportExtraMissing as exc:
        print(f"nest-rt: {exc}", file=sys.stderr)
        return 2
    except (NESTError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"nest-rt {args.command}: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-rt", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="synthetic toolkit -> bundle -> responses, in one go")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    demo.add_argument("--nest-dir", type=Path, help="use this toolkit instead of a synthetic one")
    demo.add_argument("--rois", nargs="+", default=["V1", "FFA-1", "lateral"])
    demo.add_argument("--images", type=int, default=12, help="number of generated images")
    demo.set_defaults(handler=_demo)

    synth = commands.add_parser("synthetic-toolkit", help="write a random-weight toolkit")
    synth.add_argument("--out", type=Path, required=True, help="toolkit directory to create")
    synth.add_argument("--subjects", type=int, nargs="+", help="default: all 8")
    synth.add_argument("--rois", nargs="+", help="default: all 23")
    synth.add_argument("--voxels", type=int, help="voxels per ROI (default: subject 1's real counts)")
    synth.add_argument("--layout", choices=["current", "legacy"], default="current")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(handler=_synthetic)

    export = commands.add_parser("export", help="toolkit directory -> ONNX bundle (needs torch)")
    export.add_argument("--nest-dir", type=Path, required=True, help="NEST toolkit directory")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    export.add_argument("--models", nargs="+", choices=list(catalog.models()), help="default: all supported")
    export.add_argument("--subjects", type=int, nargs="+", help="default: every subject found")
    export.add_argument("--rois", nargs="+", help="fwRF ROIs (default: every ROI found)")
    export.add_argument("--vit-weights", type=Path,
                        help="torchvision vit_b_32 state dict for the EEG and fsaverage models "
                             "(default: torchvision's ImageNet weights, downloaded or cached as upstream)")
    export.add_argument("--precisions", nargs="+", choices=["int8", "fp16"], default=[],
                        help="also write these ViT backbones: int8 (CPU) and/or fp16 (CUDA only); "
                             "their fidelity against fp32 is measured and recorded in bundle.json")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    export.set_defaults(handler=_export)
    return parser


class _ExportExtraMissing(RuntimeError):
    pass


def _export_stage():
    """Import the torch-based export package, or explain how to install it. Only these
    commands load torch; the runtime never does."""
    import importlib
    import importlib.util
    missing = [name for name in ("torch", "torchvision", "onnx", "sklearn") if importlib.util.find_spec(name) is None]
    if missing:
        raise _ExportExtraMissing(f"this command needs the export extra ({', '.join(missing)} missing): "
                                  "pip install 'nest-rt[export]'")
    return (importlib.import_module("nest_rt_export.exporter"),
            importlib.import_module("nest_rt_export.synthetic"))


def _synthetic(args) -> None:
    _, synthetic = _export_stage()
    synthetic.write_toolkit(args.out, subjects=args.subjects, rois=args.rois, voxels=args.voxels,
                            seed=args.seed, layout=args.layout)
    print(f"synthetic toolkit written to {args.out}")


def _export(args) -> None:
    exporter, _ = _export_stage()
    exporter.export_bundle(args.nest_dir, args.out, models=args.models, subjects=args.subjects,
                           rois=args.rois, vit_weights=args.vit_weights, precisions=args.precisions,
                           overwrite=args.overwrite)


def _demo(args) -> None:
    import numpy as np
    from PIL import Image

    from .api import NEST
    exporter, synthetic = _export_stage()
    out = args.out
    nest_dir = args.nest_dir
    if nest_dir is None:
        nest_dir = out / "synthetic_toolkit"
        print(f"1/4 writing a synthetic toolkit (random weights, subject 1, ROIs {args.rois}) to {nest_dir}")
        synthetic.write_toolkit(nest_dir, subjects=[1], rois=args.rois)
    bundle_dir = out / "bundle"
    print(f"2/4 exporting to {bundle_dir} (parity against the torch reference is checked per graph)")
    exporter.export_bundle(nest_dir, bundle_dir, subjects=[1], rois=args.rois, overwrite=True,
                           log=lambda message: print("    " + message))
    image_dir = out / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(synthetic.synthetic_images(args.images, 256, seed=7)):
        paths.append(image_dir / f"image_{index:03d}.png")
        Image.fromarray(image.transpose(1, 2, 0)).save(paths[-1])
    print(f"3/4 wrote {len(paths)} images to {image_dir}")
    nest = NEST(bundle_dir)
    response_dir = out / "responses"
    response_dir.mkdir(parents=True, exist_ok=True)
    print(f"4/4 encoding them with nest_rt (torch-free onnxruntime) into {response_dir}")
    for roi in args.rois:
        model = nest.get_encoding_model("fmri", "nsd", "fwrf", subject=1, roi=roi, device="auto")
        responses, metadata = nest.encode(model, paths, return_metadata=True)
        target = response_dir / f"sub-01_roi-{roi}.npy"
        np.save(target, responses)
        print(f"    {roi:>8}: responses {responses.shape} {responses.dtype}, mean {responses.mean():+.3f}, "
              f"std {responses.std():.3f}; mask volume {metadata['fmri']['roi_mask_volume'].shape} "
              f"-> {target}")
    print("done. Load them with numpy.load; see README for the NEST API.")


if __name__ == "__main__":
    sys.exit(main())
