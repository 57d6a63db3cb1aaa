"""ONNX graphs of the linear models: one shared backbone per network and one folded head per subject.

The ViT-B/32 backbone is described here; the AlexNet ones (alexnet_onnx.py) share its
preprocessing, its merge (merged_backbone), the head graph and the precision writers.

backbone.onnx: images uint8 [N, 3, S, S] -> features float32 [N, 460800]. Upstream's inference
  transform (resize so the short side is 256, bilinear + antialias on the integer tensor,
  centre crop 224, /255, ImageNet normalisation) is written by hand in front of torchvision's
  vit_b_32 feature extractor, which torch.onnx (dynamo) exports and onnxscript rewrites with
  onnxruntime's fused attention and GELU kernels (com.microsoft operators; a portable export keeps
  standard ONNX operators; the fusions saved about 3 % of the fp32 time, see _fuse_for_onnxruntime).
head: features [N, 460800] -> responses [N, P*O]: StandardScaler and each of the P PCAs folded
  into one matrix and bias, then each PCA block's regression (P = 1, or 4 for EEG files with one
  PCA per repetition). All four weight arrays are graph inputs, stored beside the head as plain
  .npy files (pca_matrix [D, P*K], pca_bias [P*K], coef [P, K, O], intercept [P, O]): the runtime
  keeps only the output columns a selection needs, and it can read a subject's 460 MB matrix
  when it needs it rather than hold every subject's at once.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx_graph import OPSET, GraphBuilder, resized_pixels, stamp_minimum_ir_version

RESIZE = 256
CROP = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXELS = "pixels"
FEATURES_NAME = "features"
COMPONENTS_NAME = "components"
PCA_MATRIX_NAME = "pca_matrix"
PCA_BIAS_NAME = "pca_bias"
COEF_NAME = "coef"
INTERCEPT_NAME = "intercept"
RESPONSES_NAME = "responses"


# preprocessing_graph in words, for the contracts of the graphs that start with it
PREPROCESSING_STEPS = [
    f"resize so that the shorter side is {RESIZE} and the longer int({RESIZE} * long / short) (bilinear, "
    "antialias, half-pixel centres, as torchvision's Resize on integer tensors), rounded half to even to integers",
    f"centre crop {CROP} x {CROP} at offsets int(round((side - {CROP}) / 2))", "divide by 255",
    "subtract the ImageNet mean (0.485, 0.456, 0.406), divide by the std (0.229, 0.224, 0.225)"]


def preprocessing_graph(portable: bool = False) -> onnx.ModelProto:
    """uint8 [N,3,H,W] -> normalised float32 [N,3,224,224], as upstream's ImageClassification
    transform: the shorter side resized to 256 (aspect ratio kept, as torchvision computes it),
    then the centre 224 x 224 crop at torchvision's offsets (int(round((side - 224) / 2)), halves
    to even). The Python runtime still takes square images only; other embedders may pass any."""
    g = GraphBuilder()
    resized = resized_pixels(g, RESIZE, portable)
    resized_hw = g.op("Slice", [g.op("Shape", [resized]), g.const("start_hw", np.array([2])),
                                g.const("stop_hw", np.array([4]))])
    margin = g.op("Cast", [g.op("Sub", [resized_hw, g.const("crop_size", np.array([CROP, CROP]))])],
                  to=TensorProto.FLOAT)
    top_left = g.op("Cast", [g.op("Round", [g.op("Div", [margin, g.const("two", np.float32(2.0))])])],
                    to=TensorProto.INT64)  # Round: halves to even, as Python's round
    cropped = g.op("Slice", [resized, top_left, g.op("Add", [top_left, g.const("crop_extent", np.array([CROP, CROP]))]),
                             g.const("crop_axes", np.array([2, 3]))])
    scaled = g.op("Div", [cropped, g.const("scale_255", np.float32(255.0))])
    centred = g.op("Sub", [scaled, g.const("imagenet_mean", np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1))])
    g.op("Div", [centred, g.const("imagenet_std", np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1))],
         name=PIXELS)
    return g.model("nest_vit_preprocessing", "", PIXELS, ["N", 3, CROP, CROP])


def _export_features(vit):
    """torchvision's vit_b_32 as a feature extractor, with its attention written out for export.

    Each encoder block computes what torchvision's EncoderBlock computes, with the block's own
    modules and weights, but its attention is the packed in-projection followed by
    scaled_dot_product_attention on [N, heads, tokens, head_dim]. torch.onnx exports that as a
    pattern onnxscript's onnxruntime fusions recognise (see _fuse_for_onnxruntime); torchvision's
    nn.MultiheadAttention exports as 8 Transposes per block that no fusion matches (97 Transposes,
    about 10 % of the int8 backbone's time). vit_torch.VitFeatures, torchvision's feature extractor
    unchanged, stays the reference the exported graph is compared with."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ExportFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            n = pixels.shape[0]
            # torchvision's own patch embedding (Conv + flatten, [N, 49, 768]); private, but it is
            # the code VitFeatures runs, so a torchvision change shows in the parity tests
            tokens = self.vit._process_input(pixels)
            hidden = torch.cat([self.vit.class_token.expand(n, -1, -1), tokens], dim=1)
            hidden = hidden + self.vit.encoder.pos_embedding
            blocks = []
            for layer in self.vit.encoder.layers:
                attention = layer.self_attention
                width, heads = hidden.shape[2], attention.num_heads
                qkv = (F.linear(layer.ln_1(hidden), attention.in_proj_weight, attention.in_proj_bias)
                       .reshape(n, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4))
                attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
                hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(n, -1, width))
                hidden = hidden + layer.mlp(layer.ln_2(hidden))
                blocks.append(hidden.flatten(1))
            return torch.cat(blocks, dim=1)

    return ExportFeatures().eval()


def _fuse_for_onnxruntime(model):
    """Rewrite the exported extractor (an onnx_ir model, in place) with onnxruntime's fused
    kernels: exact-erf GELU + its bias -> BiasGelu, attention -> MultiHeadAttention (both
    com.microsoft ops, on the CPU and CUDA providers). Measured on the int8 backbone here: 20.6 ->
    18.7 ms per image, fp32 52.1 -> 50.4 (benchmarks/README.md). Returns how many of each were
    fused; SkipLayerNormalization is left out on purpose: onnxruntime's kernel was slower than
    the Add + LayerNormalization it replaces (40 vs 13 ms per 16 images)."""
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter.ort_fusions import shape_optimization
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
    common_passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    counts = {"erf_gelu": fuse_erfgelu(model), "sdpa": fuse_sdpa(model, apply_shape_inference=True),
              "multi_head_attention": replace_sdpa_by_mha(model), "bias_gelu": fuse_bias_gelu(model)}
    optimize(model)
    common_passes.TopologicalSortPass()(model)
    return counts


def backbone_model(vit, portable: bool = False) -> onnx.ModelProto:
    """The full ViT-B/32 backbone graph (preprocessing + feature extractor) for a torchvision
    vit_b_32: with onnxruntime's fused attention and GELU kernels, or (``portable``) in standard
    ONNX operators only and resized by MatMuls, for other engines (OpenVINO, TensorRT,
    onnx.reference)."""
    return merged_backbone(_export_features(vit), "vit/", fuse=not portable, portable=portable)


def merged_backbone(extractor_module, prefix: str, fuse: bool, portable: bool = False) -> onnx.ModelProto:
    """uint8 images -> features: upstream's transform (preprocessing_graph) in front of a torch
    module mapping normalised [N, 3, 224, 224] pixels to [N, F] features, exported by torch.onnx
    (dynamo); ``fuse`` rewrites it with onnxruntime's fused kernels (the ViT); ``portable``
    resizes with standard MatMuls (onnx_graph.resized_pixels)."""
    import onnx_ir
    import torch
    example = torch.zeros(2, 3, CROP, CROP)
    with torch.no_grad():
        program = torch.onnx.export(extractor_module, (example,), dynamo=True, input_names=[PIXELS],
                                    output_names=[FEATURES_NAME], opset_version=OPSET,
                                    dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
    fused = _fuse_for_onnxruntime(program.model) if fuse else {}
    extractor = onnx_ir.serde.serialize_model(program.model)
    helper.set_model_props(extractor, {"nest_rt.fused_ops": json.dumps(fused, sort_keys=True)})
    preprocessing = preprocessing_graph(portable)
    preprocessing.ir_version = extractor.ir_version
    merged = onnx.compose.merge_models(preprocessing, extractor, io_map=[(PIXELS, PIXELS)], prefix2=prefix)
    merged.graph.output[0].name = FEATURES_NAME
    rename_value(merged.graph, prefix + FEATURES_NAME, FEATURES_NAME)
    # merge_models lists the default domain once per input model; tools expect it once
    unique = {(o.domain, o.version): o for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(unique.values())
    stamp_minimum_ir_version(merged)
    return merged


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` wherever a node of ``graph`` makes or reads it."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]


def folded_pca(scaler: dict, pcas: list[dict], used: int) -> tuple[np.ndarray, np.ndarray]:
    """The StandardScaler and the first ``used`` components of each PCA as one affine map
    f @ A + a: per PCA, A = diag(1/scale) W^T and a = -(mean/scale + pca_mean) W^T, the PCAs'
    blocks side by side ([D, len(pcas) * used]); computed in float64 and returned in float32
    (the components are float32 before the regression, as upstream casts them)."""
    scale = np.asarray(scaler["scale_"], np.float64)
    centre = np.asarray(scaler["mean_"], np.float64) / scale
    matrices, biases = [], []
    for pca in pcas:
        components = np.asarray(pca["components_"][:used], np.float64)       # [K, D]
        matrices.append((components / scale).T.astype(np.float32))          # [D, K]
        biases.append((-(centre + np.asarray(pca["mean_"], np.float64)) @ components.T).astype(np.float32))
    matrix = matrices[0] if len(matrices) == 1 else np.concatenate(matrices, axis=1)
    return np.ascontiguousarray(matrix), np.concatenate(biases)


def head_model(features: int, used: int, pca_blocks: int, doc: str) -> onnx.ModelProto:
    """features [N, D] -> responses [N, P*O] for one subject, P = ``pca_blocks``:
    components = f @ pca_matrix + pca_bias ([N, P*K]); block p's responses are its K components
    @ coef[p] + intercept[p]. Every weight is an input (see the module docstring), so the graph
    is a few hundred bytes and the same for every subject of a model."""
    g = GraphBuilder()
    product = g.op("MatMul", [FEATURES_NAME, PCA_MATRIX_NAME])
    reduced = g.op("Add", [product, PCA_BIAS_NAME], name=COMPONENTS_NAME)
    if pca_blocks == 1:  # [N, K] @ [1, K, O] -> [1, N, O]; dropping the leading 1 copies nothing
        blocks = g.op("Add", [g.op("MatMul", [reduced, COEF_NAME]), INTERCEPT_NAME])
        g.op("Squeeze", [blocks, g.const("axis_0", np.array([0]))], name=RESPONSES_NAME)
    else:  # [N, P*K] -> [P, N, K] @ [P, K, O] -> [P, N, O] -> [N, P*O]
        split = g.op("Reshape", [reduced, g.const("blocks_of_components", np.array([-1, pca_blocks, used]))])
        per_block = g.op("MatMul", [g.op("Transpose", [split], perm=[1, 0, 2]), COEF_NAME])
        shifted = g.op("Add", [per_block, g.op("Unsqueeze", [INTERCEPT_NAME, g.const("axis_1", np.array([1]))])])
        g.op("Reshape", [g.op("Transpose", [shifted], perm=[1, 0, 2]), g.const("flat", np.array([0, -1]))],
             name=RESPONSES_NAME)
    inputs = [helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["N", features]),
              helper.make_tensor_value_info(PCA_MATRIX_NAME, TensorProto.FLOAT, [features, pca_blocks * used]),
              helper.make_tensor_value_info(PCA_BIAS_NAME, TensorProto.FLOAT, [pca_blocks * used]),
              helper.make_tensor_value_info(COEF_NAME, TensorProto.FLOAT, [pca_blocks, used, "O"]),
              helper.make_tensor_value_info(INTERCEPT_NAME, TensorProto.FLOAT, [pca_blocks, "O"])]
    return g.model("nest_vit_head", doc, RESPONSES_NAME, ["N", "R"], graph_inputs=inputs)


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


def save_with_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save with all weights in ``<name>.data`` beside the graph (memory-mappable, no 2 GB cap).
    Returns the files written."""
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]
