"""The ``nest-rt`` command line.

Subcommands:
  demo               build a synthetic toolkit (or use --nest-dir), export it, encode images
  synthetic-toolkit  write a toolkit with random weights in the upstream file formats
  export             convert a NEST toolkit directory into an ONNX bundle (needs torch)
  list               the models a bundle holds, as a table
  info               one model's contract, dimensions, provenance and export parity
  verify             check a bundle: sha256 of every file, every graph loads and gives finite outputs
  encode             encode images (files, folders, globs, .npy/.h5 arrays) to response files;
                     resumable after any interruption, shardable with --shard I/N
  merge              assemble the shards of one encode run and verify them
  plot               PNG plots of an encode run's responses
Exit codes: 0 success; 2 for every user error, with a one-line reason on stderr and no
traceback; 130 when interrupted by Ctrl-C and 143 by SIGTERM (re-run the same encode command to
resume); 141 when the reader of the output has gone (nest-rt list | head).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import catalog, interrupts
from .errors import InvalidParameterError, NESTError
from .ray import CONNECT_TIMEOUT_S
from .runs import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_THREADS


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with interrupts.stop_on_signals():
            status = args.handler(args) or 0
            interrupts.raise_if_stopped()  # a stop Python dropped is still reported as one
        sys.stdout.flush()  # here, so that a closed pipe is handled below and not at interpreter exit
        return status
    except _ExportExtraMissing as exc:
        print(f"nest-rt: {exc}", file=sys.stderr)
        return 2
    except (NESTError, ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"nest-rt {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        terminated = interrupts.received() == signal.SIGTERM
        print(f"nest-rt {args.command}: " + ("terminated (SIGTERM)" if terminated else "interrupted") + (
            "; finished chunks are kept: run the same command again to resume" if args.command == "encode" else ""),
            file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # e.g. nest-rt list | head: the reader has gone; no traceback, 128 + SIGPIPE
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that Python's final flush of stdout stays quiet
        return 141


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nest-rt", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="generated images -> responses, with synthetic models (no toolkit needed)",
        description="With the export extra (torch): a synthetic toolkit of all three families (fwRF, EEG, "
                    "fsaverage), exported with parity checks, then encoded. Without it (pip install "
                    "'nest-rt[demo]'): a torch-free demo bundle of random fwRF models, then encoded.")
    demo.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    demo.add_argument("--nest-dir", type=Path, help="export and use this toolkit instead of a synthetic one")
    _add_weights_options(demo, "with --nest-dir: ")
    demo.add_argument("--rois", nargs="+", default=["V1", "FFA-1", "lateral"])
    demo.add_argument("--images", type=int, default=12, help="number of generated images")
    demo.add_argument("--runtime-only", action="store_true",
                      help="build the torch-free demo bundle even when torch is installed")
    demo.set_defaults(handler=_demo)

    synth = commands.add_parser("synthetic-toolkit", help="write a random-weight toolkit")
    synth.add_argument("--out", type=Path, required=True, help="toolkit directory to create")
    synth.add_argument("--models", nargs="+", choices=["fwrf", "eeg", "fsaverage", "eeg-alexnet", "fsaverage-alexnet"],
                       default=["fwrf"],
                       help="families to write (default fwrf); eeg and fsaverage also write random ViT-B/32 "
                            "weights (vit_b_32_synthetic.pth: pass it to export --vit-weights) and take "
                            "about 0.5 and 0.8 GB per subject at the real 250 components; the AlexNet ones "
                            "(BERG's current format, trained and untrained) write random AlexNet weights "
                            "(alexnet_synthetic.pth: export --alexnet-weights)")
    synth.add_argument("--components", type=int, default=250, help="PCA components of the ViT heads (real: 250)")
    synth.add_argument("--subjects", type=int, nargs="+", help="default: every subject of each model")
    synth.add_argument("--rois", nargs="+", help="default: all 23")
    synth.add_argument("--voxels", type=int, help="voxels per ROI (default: subject 1's real counts)")
    synth.add_argument("--layout", choices=["current", "legacy"], default="current")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--pregenerated-images", type=int, default=0,
                       help="legacy layout: also write upstream-style pregenerated responses for this many images")
    synth.set_defaults(handler=_synthetic)

    export = commands.add_parser("export", help="toolkit directory -> ONNX bundle (needs torch)")
    export.add_argument("--nest-dir", "--berg-dir", dest="nest_dir", type=Path, required=True,
                        help="NEST or BERG toolkit directory (the folder holding encoding_models/)")
    export.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    export.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"model ids or short names (default: every model found): {', '.join(catalog.models())}")
    export.add_argument("--subjects", nargs="+", help="default: every subject found (TVSD: N, F)")
    export.add_argument("--rois", nargs="+", help="fwRF ROIs (default: every ROI found)")
    _add_weights_options(export, "")
    export.add_argument("--precisions", nargs="+", choices=["int8", "fp16"], default=[],
                        help="also write these backbones: int8 (CPU) and/or fp16 (CUDA only); "
                             "their fidelity against fp32 is measured and recorded in bundle.json")
    export.add_argument("--pregenerated", action="store_true",
                        help="also convert the toolkit's pregenerated-response metadata (pickles) into pickle-free "
                             ".npz files in the bundle, for NEST.load_insilico_neural_responses")
    export.add_argument("--portable", action="store_true",
                        help="standard ONNX operators only (no onnxruntime fused kernels), for other engines "
                             "such as OpenVINO, TensorRT or onnx.reference; slightly slower on onnxruntime")
    export.add_argument("--self-contained", action="store_true",
                        help="also write one graph per linear model and subject, uint8 images in, responses out, "
                             "backbone and head weights inside (for embedding; each repeats the backbone's weights)")
    export.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    export.set_defaults(handler=_export)

    bundle_help = "bundle directory (default: $NEST_RT_BUNDLE)"
    listing = commands.add_parser("list", help="the models a bundle holds, as a table")
    listing.add_argument("--bundle", default=os.environ.get("NEST_RT_BUNDLE"), help=bundle_help)
    listing.set_defaults(handler=_list)

    info = commands.add_parser("info", help="one model: contract, dimensions, provenance, parity at export")
    info.add_argument("model", help="model id (or fwrf, eeg, fsaverage)")
    info.add_argument("--bundle", default=os.environ.get("NEST_RT_BUNDLE"), help=bundle_help)
    info.set_defaults(handler=_info)

    verify = commands.add_parser("verify", help="sha256 of every file; every model loads and gives finite outputs")
    verify.add_argument("bundle_dir", nargs="?", metavar="BUNDLE", help="bundle directory (or --bundle)")
    verify.add_argument("--bundle", default=os.environ.get("NEST_RT_BUNDLE"), help=bundle_help)
    verify.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    verify.add_argument("--expect-sha256", metavar="HASH",
                        help="the sha256 of bundle.json from a source you trust: anchors every file's sha256 "
                             "against tampering, not only against corruption")
    verify.set_defaults(handler=_verify)

    encode = commands.add_parser(
        "encode", help="images -> response files (resumable, shardable)",
        formatter_class=argparse.RawDescriptionHelpFormatter, description=_ENCODE_HELP)
    encode.add_argument("inputs", nargs="+", help="image files, folders (recursive, sorted), glob patterns, "
                                                  "or one .npy/.h5 array of uint8 images")
    encode.add_argument("--model", dest="models", action="append", required=True, metavar="SPEC",
                        help="MODEL[:subjects=..][:roi=..][:channels=..][:timepoints=..]; repeat for more")
    encode.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds this run)")
    encode.add_argument("--bundle", default=os.environ.get("NEST_RT_BUNDLE"), help=bundle_help)
    encode.add_argument("--imageset", default="images", help="name of the image set in the output layout")
    encode.add_argument("--shard", default="0/1", help="I/N: encode only the I-th of N shards (0-based)")
    encode.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"images per durable chunk (default {DEFAULT_CHUNK_SIZE}, at most {MAX_CHUNK_SIZE})")
    encode.add_argument("--h5", action="store_true", help="also write HDF5 files in upstream's layout (needs h5py)")
    encode.add_argument("--center-crop", action="store_true", help="crop non-square images to their central square")
    encode.add_argument("--skip-bad-images", action="store_true",
                        help="leave out unreadable (or non-square) images, listed in run.json, instead of stopping")
    encode.add_argument("--h5-dataset", help="dataset holding the images in an .h5 input")
    encode.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    encode.add_argument("--threads", type=int, help=f"onnxruntime threads (default: all cores; at most {MAX_THREADS}, "
                                                    "with a warning above this machine's cores)")
    encode.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                        help="the backbone's precision (linear models only; the bundle must hold it): "
                             "int8 for the CPU, fp16 for CUDA")
    encode.add_argument("--no-progress", action="store_true", help="no progress bar")
    encode.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="ray: encode the chunks on Ray workers (needs the ray extra; the output is the same)")
    encode.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: join this Ray cluster (default: $RAY_ADDRESS, else start a local "
                             "Ray instance); refused if it does not answer within "
                             f"{CONNECT_TIMEOUT_S} s")
    encode.add_argument("--workers", type=int, help="with --engine ray: Ray workers (default: one per --threads "
                                                    "CPUs of the cluster); each loads the models once")
    encode.add_argument("--gpus-per-worker", type=float,
                        help="with --engine ray: GPUs each worker reserves (default: 1 with --device cuda, else 0)")
    encode.set_defaults(handler=_encode)

    merge = commands.add_parser("merge", help="assemble the shards of one encode run")
    merge.add_argument("shards", nargs="+", type=Path, help="the shard output folders")
    merge.add_argument("--out", type=Path, required=True, help="new folder for the merged run")
    merge.set_defaults(handler=_merge)

    plot = commands.add_parser("plot", help="PNG plots of an encode run (needs matplotlib)")
    plot.add_argument("run", type=Path, help="an encode output folder")
    plot.add_argument("--out", type=Path, help="folder for the PNG files (default: RUN/plots)")
    plot.add_argument("--outputs", nargs="+", help="output names from run.json (default: all)")
    plot.add_argument("--images", type=int, nargs="+", help="rows to show with their thumbnails (up to 8)")
    plot.add_argument("--max-images", type=int, default=200, help="rows read per output (default 200)")
    plot.set_defaults(handler=_plot)
    return parser


_ENCODE_HELP = """Encode images with one or more models into response files.

Each --model gives a model and what to encode with it:
  fwrf:subjects=1:roi=V1,FFA-1          fMRI fwRF, subject 1, two ROIs (roi=all: every exported ROI)
  eeg:subjects=all                      EEG, every exported subject, all 63 channels x 140 times
  eeg:subjects=1,2:channels=Oz,O1:timepoints=20-79
  fsaverage:subjects=1:roi=V1v          fsaverage surface, one ROI (no roi: all 327,684 vertices)
  meg:subjects=1-4:region=Occipital     MEG, Occipital sensors (train_split=full,split1: one output each;
                                        train_splits=single: the four splits stacked)
  tvsd:subjects=F:roi=V4,V1+IT          Utah array, monkey F: V4, and V1 with IT (one output each)
  things_fmri:subjects=1:roi=V1+lFFA    THINGS fMRI voxels of V1 then lFFA
Keys: subjects, roi, the model's list selections (channels, region, sensors), its 0/1 masks given as
indices and ranges (timepoints=0-69, electrodes=0-99, sensor_index, voxel_index), train_split(s).
Images are decoded once per batch for all models, and the ViT backbone runs once per batch
for every model on it. Output layout and run record: see docs/encoding.md.
Interrupted runs resume when the same command is run again; a different command on the same
--out is refused.
"""


def _bundle(args) -> str:
    if not args.bundle:
        raise InvalidParameterError("--bundle is required (or set NEST_RT_BUNDLE)")
    return args.bundle


def _list(args) -> None:
    from .bundle import Bundle
    from .bundle_tools import bundle_rows, format_table
    bundle = Bundle(_bundle(args))
    rows = bundle_rows(bundle)
    print(format_table(rows))
    print(f"{len(rows)} models in {bundle.root}")


def _info(args) -> None:
    from .bundle import Bundle
    from .bundle_tools import model_info
    print(model_info(Bundle(_bundle(args)), catalog.canonical_id(args.model)))


def _verify(args) -> None:
    from .bundle_tools import verify_bundle
    bundle = args.bundle_dir or _bundle(args)
    count = verify_bundle(bundle, device=args.device, expect_sha256=args.expect_sha256)
    print(f"bundle {bundle} verified: {count} models")


def _encode(args) -> None:
    from .runs import RunInputs, encode_run, parse_shard
    shard = parse_shard(args.shard)
    inputs = RunInputs(args.inputs, center_crop=args.center_crop, skip_bad=args.skip_bad_images,
                       h5_dataset=args.h5_dataset, exclude=[args.out],
                       report=lambda message: print(message, file=sys.stderr))
    engine = None
    if args.engine == "ray":
        from .ray import RayEngine
        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if args.device == "cuda" else 0.0)
        engine = RayEngine(args.ray_address, args.workers, args.threads, gpus)
    elif args.ray_address or args.workers or args.gpus_per_worker is not None:
        raise InvalidParameterError("--ray-address, --workers and --gpus-per-worker need --engine ray")
    record = encode_run(_bundle(args), inputs, args.models, args.out, imageset=args.imageset, shard=shard,
                        chunk_size=args.chunk_size, h5=args.h5, device=args.device, num_threads=args.threads,
                        precision=args.precision, show_progress=not args.no_progress, engine=engine)
    for output in record["outputs"]:
        for info in output["arrays"].values():
            print(f"{args.out / info['file']}  {tuple(info['shape'])}")
    print(f"run record: {args.out / 'run.json'}")


def _merge(args) -> None:
    from .runs import merge_runs
    merge_runs(args.shards, args.out)


def _plot(args) -> None:
    from .plots import plot_run
    for path in plot_run(args.run, args.out or args.run / "plots", outputs=args.outputs, images=args.images,
                         max_images=args.max_images):
        print(path)


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
    import importlib
    _, synthetic = _export_stage()
    if "fwrf" in args.models:
        synthetic.write_toolkit(args.out, subjects=args.subjects, rois=args.rois, voxels=args.voxels,
                                seed=args.seed, layout=args.layout, pregenerated_images=args.pregenerated_images)
    vit = _chosen_subjects(args, {"eeg": "eeg-things_eeg_2-vit_b_32", "fsaverage": "fmri-nsd_fsaverage-vit_b_32"})
    if vit:
        synthetic_vit = importlib.import_module("nest_rt_export.synthetic_vit")
        synthetic_vit.write_vit_toolkit(args.out, eeg_subjects=vit.get("eeg", []),
                                        fsaverage_subjects=vit.get("fsaverage", []), layout=args.layout,
                                        components=args.components, seed=args.seed,
                                        pregenerated_images=args.pregenerated_images)
        print(f"random ViT-B/32 weights: {args.out / synthetic_vit.VIT_WEIGHTS_NAME} (export with --vit-weights)")
    alexnet = _chosen_subjects(args, {"eeg-alexnet": "eeg-things_eeg_2-alexnet",
                                      "fsaverage-alexnet": "fmri-nsd_fsaverage-alexnet"})
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


def _add_weights_options(command, prefix: str) -> None:
    """--weights NAME=PATH (repeatable) and its older aliases, all into args.weights as pairs."""
    backbones = ", ".join(catalog.load_manifest()["backbones"])
    command.add_argument("--weights", action="append", default=[], type=_backbone_weights, metavar="NAME=PATH",
                         help=f"{prefix}a torchvision state dict for the backbone NAME ({backbones}); repeatable. "
                              "Default: the backbone's own weights (torchvision's ImageNet weights, downloaded or "
                              "cached as upstream; the untrained AlexNet is built from upstream's seed)")
    for alias, name in (("--vit-weights", "vit_b_32"), ("--alexnet-weights", "alexnet")):
        command.add_argument(alias, dest="weights", action="append", metavar="PATH",
                             type=lambda path, name=name: (name, Path(path)), help=f"the same as --weights {name}=PATH")


def _backbone_weights(text: str) -> tuple[str, Path]:
    name, equals, path = text.partition("=")
    if not equals or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _weights(args) -> dict[str, Path]:
    """args.weights as backbone -> path; a backbone given twice is refused."""
    weights: dict[str, Path] = {}
    for name, path in args.weights:
        if name in weights and weights[name] != path:
            raise InvalidParameterError(f"--weights: two files for the {name} backbone: {weights[name]} and {path}")
        weights[name] = path
    return weights


def _export(args) -> None:
    exporter, _ = _export_stage()
    exporter.export_bundle(args.nest_dir, args.out, models=args.models, subjects=args.subjects,
                           rois=args.rois, weights=_weights(args),
                           precisions=args.precisions, overwrite=args.overwrite, pregenerated=args.pregenerated,
                           portable=args.portable, self_contained=args.self_contained)


def _demo(args) -> None:
    from .demo import run_demo
    if args.images < 1:
        raise InvalidParameterError(f"--images must be >= 1, got {args.images}")
    run_demo(args.out, args.nest_dir, args.rois, args.images, runtime_only=args.runtime_only,
             weights=_weights(args))


if __name__ == "__main__":
    sys.exit(main())
