"""nest-rt export: a NEST or BERG toolkit directory -> an ONNX bundle (needs torch)."""
from __future__ import annotations

from pathlib import Path

from .. import catalog
from .export_extra import export_stage
from .options import add_weights_options, weights

NAME = "export"
HELP = "toolkit directory -> ONNX bundle (needs torch)"


def add_arguments(parser) -> None:
    parser.add_argument("--nest-dir", "--berg-dir", dest="nest_dir", type=Path, required=True,
                        help="NEST or BERG toolkit directory (the folder holding encoding_models/)")
    parser.add_argument("--out", type=Path, required=True, help="bundle directory to create")
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"model ids or short names (default: every model found): {', '.join(catalog.models())}")
    parser.add_argument("--subjects", nargs="+", help="default: every subject found (TVSD: N, F)")
    parser.add_argument("--rois", nargs="+", help="fwRF ROIs (default: every ROI found)")
    add_weights_options(parser, "")
    parser.add_argument("--precisions", nargs="+", choices=["int8", "fp16"], default=[],
                        help="also write these backbones: int8 (CPU) and/or fp16 (CUDA only); "
                             "their fidelity against fp32 is measured and recorded in bundle.json")
    parser.add_argument("--pregenerated", action="store_true",
                        help="also convert the toolkit's pregenerated-response metadata (pickles) into pickle-free "
                             ".npz files in the bundle, for NEST.load_insilico_neural_responses")
    parser.add_argument("--portable", action="store_true",
                        help="standard ONNX operators only (no onnxruntime fused kernels), for other engines "
                             "such as OpenVINO, TensorRT or onnx.reference; slightly slower on onnxruntime")
    parser.add_argument("--self-contained", action="store_true",
                        help="also write one graph per linear model and subject, uint8 images in, responses out, "
                             "backbone and head weights inside (for embedding; each repeats the backbone's weights)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")


def run(args) -> None:
    exporter, _ = export_stage()
    exporter.export_bundle(args.nest_dir, args.out, models=args.models, subjects=args.subjects,
                           rois=args.rois, weights=weights(args),
                           precisions=args.precisions, overwrite=args.overwrite, pregenerated=args.pregenerated,
                           portable=args.portable, self_contained=args.self_contained)
