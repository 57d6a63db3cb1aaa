"""nest-rt encode: images -> response files, resumable after any interruption, shardable."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidParameterError
from ..limits import CONNECT_TIMEOUT_S, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_THREADS
from . import options

NAME = "encode"
HELP = "images -> response files (resumable, shardable)"
DESCRIPTION = """Encode images with one or more models into response files.

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
PARSER = dict(formatter_class=argparse.RawDescriptionHelpFormatter, description=DESCRIPTION)


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="image files, folders (recursive, sorted), glob patterns, "
                                                  "or one .npy/.h5 array of uint8 images")
    parser.add_argument("--model", dest="models", action="append", required=True, metavar="SPEC",
                        help="MODEL[:subjects=..][:roi=..][:channels=..][:timepoints=..]; repeat for more")
    parser.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds this run)")
    options.add_bundle_option(parser)
    parser.add_argument("--imageset", default="images", help="name of the image set in the output layout")
    parser.add_argument("--shard", default="0/1", help="I/N: encode only the I-th of N shards (0-based)")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                        help=f"images per durable chunk (default {DEFAULT_CHUNK_SIZE}, at most {MAX_CHUNK_SIZE})")
    parser.add_argument("--h5", action="store_true", help="also write HDF5 files in upstream's layout (needs h5py)")
    parser.add_argument("--center-crop", action="store_true", help="crop non-square images to their central square")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave out unreadable (or non-square) images, listed in run.json, instead of stopping")
    parser.add_argument("--h5-dataset", help="dataset holding the images in an .h5 input")
    options.add_device_option(parser)
    parser.add_argument("--threads", type=int, help=f"onnxruntime threads (default: all cores; at most {MAX_THREADS}, "
                                                    "with a warning above this machine's cores)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8", "fp16"],
                        help="the backbone's precision (linear models only; the bundle must hold it): "
                             "int8 for the CPU, fp16 for CUDA")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_ray_arguments(parser)


def _add_ray_arguments(parser) -> None:
    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="ray: encode the chunks on Ray workers (needs the ray extra; the output is the same)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="with --engine ray: join this Ray cluster (default: $RAY_ADDRESS, else start a local "
                             "Ray instance); refused if it does not answer within "
                             f"{CONNECT_TIMEOUT_S} s")
    parser.add_argument("--workers", type=int, help="with --engine ray: Ray workers (default: one per --threads "
                                                    "CPUs of the cluster); each loads the models once")
    parser.add_argument("--gpus-per-worker", type=float,
                        help="with --engine ray: GPUs each worker reserves (default: 1 with --device cuda, else 0)")


def run(args) -> None:
    from ..runs import RunInputs, encode_run, parse_shard
    shard = parse_shard(args.shard)
    inputs = RunInputs(args.inputs, center_crop=args.center_crop, skip_bad=args.skip_bad_images,
                       h5_dataset=args.h5_dataset, exclude=[args.out],
                       report=lambda message: print(message, file=sys.stderr))
    engine = _engine(args)
    record = encode_run(options.bundle(args), inputs, args.models, args.out, imageset=args.imageset, shard=shard,
                        chunk_size=args.chunk_size, h5=args.h5, device=args.device, num_threads=args.threads,
                        precision=args.precision, show_progress=not args.no_progress, engine=engine)
    for output in record["outputs"]:
        for info in output["arrays"].values():
            print(f"{args.out / info['file']}  {tuple(info['shape'])}")
    print(f"run record: {args.out / 'run.json'}")


def _engine(args):
    """The Ray engine for --engine ray, else None (encode here); Ray's options without it are refused."""
    if args.engine == "ray":
        from ..ray import RayEngine
        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if args.device == "cuda" else 0.0)
        return RayEngine(args.ray_address, args.workers, args.threads, gpus)
    if args.ray_address or args.workers or args.gpus_per_worker is not None:
        raise InvalidParameterError("--ray-address, --workers and --gpus-per-worker need --engine ray")
    return None

