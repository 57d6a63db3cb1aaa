"""nest-rt demo: generated images -> responses, with synthetic models."""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidParameterError
from .options import add_weights_options, weights

NAME = "demo"
HELP = "generated images -> responses, with synthetic models (no toolkit needed)"
PARSER = dict(description="With the export extra (torch): a synthetic toolkit of all three families (fwRF, EEG, "
                          "fsaverage), exported with parity checks, then encoded. Without it (pip install "
                          "'nest-rt[demo]'): a torch-free demo bundle of random fwRF models, then encoded.")


def add_arguments(parser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="working folder")
    parser.add_argument("--nest-dir", type=Path, help="export and use this toolkit instead of a synthetic one")
    add_weights_options(parser, "with --nest-dir: ")
    parser.add_argument("--rois", nargs="+", default=["V1", "FFA-1", "lateral"])
    parser.add_argument("--images", type=int, default=12, help="number of generated images")
    parser.add_argument("--runtime-only", action="store_true",
                        help="build the torch-free demo bundle even when torch is installed")


def run(args) -> None:
    from ..demo import run_demo
    if args.images < 1:
        raise InvalidParameterError(f"--images must be >= 1, got {args.images}")
    run_demo(args.out, args.nest_dir, args.rois, args.images, runtime_only=args.runtime_only,
             weights=weights(args))
