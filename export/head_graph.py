"""The folded head every linear model shares, whatever its backbone: features -> responses.

head: features [N, D] -> responses [N, P*O]: StandardScaler and each of the P PCAs folded into
one matrix and bias, then each PCA block's regression (P = 1, or 4 for EEG files with one PCA
per repetition). All four weight arrays are graph inputs, stored beside the head as plain .npy
files (pca_matrix [D, P*K], pca_bias [P*K], coef [P, K, O], intercept [P, O]): the runtime keeps
only the output columns a selection needs, and it can read a subject's 460 MB matrix when it
needs it rather than hold every subject's at once.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .onnx_graph import GraphBuilder

FEATURES_NAME = "features"  # the backbone graph's output and the head graph's input
COMPONENTS_NAME = "components"
PCA_MATRIX_NAME = "pca_matrix"
PCA_BIAS_NAME = "pca_bias"
COEF_NAME = "coef"
INTERCEPT_NAME = "intercept"
RESPONSES_NAME = "responses"


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
    # the graph's name is kept from when only the ViT had heads: it is written into every head graph
    return g.model("nest_vit_head", doc, RESPONSES_NAME, ["N", "R"], graph_inputs=inputs)
