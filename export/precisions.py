"""The opt-in lower-precision copies of a backbone graph (``nest-rt export --precisions``); the
exporter measures each one's fidelity against the fp32 graph and records it."""
from __future__ import annotations

from pathlib import Path

import onnx

from .onnx_graph import save_with_external_data


def int8_backbone(fp32_path: Path, int8_path: Path) -> None:
    """Dynamic int8 quantisation of the backbone's MatMul/Gemm weights (activations are quantised
    per batch at run time). An opt-in CPU precision: fidelity is measured and recorded by the
    exporter, because trained ViTs have activation outliers that int8 can clip.

    Weights use 7 bits (reduce_range): on x86 CPUs with AVX2 but without VNNI, onnxruntime's
    u8 x s8 kernels sum pairs of products in int16 and saturate with 8-bit weights (measured on
    an AVX2-only EPYC: feature correlation down to -0.26, responses 0.59; with 7 bits 0.95 and
    above 0.99). The same graph then gives the same results on every CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(fp32_path, int8_path, op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)


def fp16_backbone(fp32_path: Path, fp16_path: Path) -> None:
    """float16 weights and activations, for the CUDA provider (on the CPU provider fp16 is slower
    and onnxruntime's optimised sessions have crashed on it). Input and output stay uint8/float32;
    the resize and rounding stay float32 so the pixels are exactly those of the fp32 graph."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(fp32_path), keep_io_types=True,
                                     op_block_list=["Resize", "Round"])
    save_with_external_data(model, fp16_path)


PRECISION_WRITERS = {"int8": int8_backbone, "fp16": fp16_backbone}
