"""What every backbone graph shares: upstream's transform written in ONNX in front of a torch
feature extractor exported by torch.onnx, and onnxruntime's fused kernels for those that want them.

backbone.onnx: images uint8 [N, 3, S, S] -> features float32 [N, F]. The transform (a backbone's
ImageClassificationPreprocessing: resize so that the short side is ``resize``, bilinear +
antialias on the integer tensor, centre crop, /255, normalisation) is written by hand
(preprocessing_graph); the backbone's own file (backbones/) gives the torch module that maps the
normalised pixels to features, which torch.onnx (dynamo) exports, and says whether onnxscript
rewrites it with onnxruntime's fused attention and GELU kernels (com.microsoft operators; a
portable export keeps standard ONNX operators).
"""
from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import TensorProto, helper

from .backbones.base import ImageClassificationPreprocessing
from .head_graph import FEATURES_NAME
from .onnx_graph import OPSET, GraphBuilder, resized_pixels, stamp_minimum_ir_version

PIXELS = "pixels"  # the normalised [N, 3, crop, crop] pixels the feature extractor takes


def preprocessing_graph(preprocessing: ImageClassificationPreprocessing, portable: bool = False) -> onnx.ModelProto:
    """uint8 [N,3,H,W] -> normalised float32 [N,3,crop,crop], as upstream's ImageClassification
    transform: the shorter side resized to ``resize`` (aspect ratio kept, as torchvision computes
    it), then the centre crop at torchvision's offsets (int(round((side - crop) / 2)), halves to
    even). The Python runtime still takes square images only; other embedders may pass any."""
    crop = preprocessing.crop
    g = GraphBuilder()
    resized = resized_pixels(g, preprocessing.resize, portable)
    resized_hw = g.op("Slice", [g.op("Shape", [resized]), g.const("start_hw", np.array([2])),
                                g.const("stop_hw", np.array([4]))])
    margin = g.op("Cast", [g.op("Sub", [resized_hw, g.const("crop_size", np.array([crop, crop]))])],
                  to=TensorProto.FLOAT)
    top_left = g.op("Cast", [g.op("Round", [g.op("Div", [margin, g.const("two", np.float32(2.0))])])],
                    to=TensorProto.INT64)  # Round: halves to even, as Python's round
    cropped = g.op("Slice", [resized, top_left, g.op("Add", [top_left, g.const("crop_extent", np.array([crop, crop]))]),
                             g.const("crop_axes", np.array([2, 3]))])
    scaled = g.op("Div", [cropped, g.const("scale_255", np.float32(255.0))])
    # the constants' and the graph's names date from the ViT's graph; they are written into every backbone graph
    mean = np.array(preprocessing.mean, np.float32).reshape(1, 3, 1, 1)
    centred = g.op("Sub", [scaled, g.const("imagenet_mean", mean)])
    std = np.array(preprocessing.std, np.float32).reshape(1, 3, 1, 1)
    g.op("Div", [centred, g.const("imagenet_std", std)], name=PIXELS)
    return g.model("nest_vit_preprocessing", "", PIXELS, ["N", 3, crop, crop])


def merged_backbone(extractor_module, prefix: str, preprocessing: ImageClassificationPreprocessing, fuse: bool,
                    portable: bool = False) -> onnx.ModelProto:
    """uint8 images -> features: upstream's transform (preprocessing_graph) in front of a torch
    module mapping normalised [N, 3, crop, crop] pixels to [N, F] features, exported by
    torch.onnx (dynamo), its values named under ``prefix``; ``fuse`` rewrites it with
    onnxruntime's fused kernels (fuse_for_onnxruntime); ``portable`` resizes with standard MatMuls
    (onnx_graph.resized_pixels)."""
    import onnx_ir
    import torch
    example = torch.zeros(2, 3, preprocessing.crop, preprocessing.crop)
    with torch.no_grad():
        program = torch.onnx.export(extractor_module, (example,), dynamo=True, input_names=[PIXELS],
                                    output_names=[FEATURES_NAME], opset_version=OPSET,
                                    dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
    fused = fuse_for_onnxruntime(program.model) if fuse else {}
    extractor = onnx_ir.serde.serialize_model(program.model)
    helper.set_model_props(extractor, {"nest_rt.fused_ops": json.dumps(fused, sort_keys=True)})
    transform = preprocessing_graph(preprocessing, portable)
    transform.ir_version = extractor.ir_version
    merged = onnx.compose.merge_models(transform, extractor, io_map=[(PIXELS, PIXELS)], prefix2=prefix)
    merged.graph.output[0].name = FEATURES_NAME
    rename_value(merged.graph, prefix + FEATURES_NAME, FEATURES_NAME)
    # merge_models lists the default domain once per input model; tools expect it once
    unique = {(o.domain, o.version): o for o in merged.opset_import}
    del merged.opset_import[:]
    merged.opset_import.extend(unique.values())
    stamp_minimum_ir_version(merged)
    return merged


def fuse_for_onnxruntime(model):
    """Rewrite an exported extractor (an onnx_ir model, in place) with onnxruntime's fused
    kernels: exact-erf GELU + its bias -> BiasGelu, attention -> MultiHeadAttention (both
    com.microsoft ops, on the CPU and CUDA providers). Measured on the ViT's int8 backbone: 20.6
    -> 18.7 ms per image, fp32 52.1 -> 50.4 (benchmarks/README.md). Returns how many of each were
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


def rename_value(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the value ``old`` to ``new`` wherever a node of ``graph`` makes or reads it."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
