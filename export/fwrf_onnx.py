"""Build the ONNX graph of one fwRF ROI directly from its checkpoint weights.

The graph is written node by node with ``onnx.helper`` rather than traced from torch: the
model is a short fixed chain of standard operators, and building it by hand gives exact
control over the resize attributes that decide parity, folds the input-independent
receptive-field softmax into constants, and takes milliseconds instead of a trace.

Graph contract: input ``images`` uint8 [N, 3, S, S] (N and S dynamic) -> output
``responses`` float32 [N, V]. Steps, in upstream's order:
  Cast -> Resize to 227x227 (bilinear, antialias, half-pixel, exclude_outside=1, as
  torchvision's tensor resize) -> Round (torchvision rounds integer images) -> /255 -> - mu ->
  encoder -> readout, and for split ROIs the split-1 voxels then the split-2 voxels.
"""
from __future__ import annotations

import numpy as np
import onnx

from .onnx_graph import GraphBuilder, resized_pixels

INPUT_SIZE = 227
OUTPUT_NAME = "responses"


def _f32(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


def _array(state: dict, key: str) -> np.ndarray:
    value = state[key]
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


class _Part:
    """Adds one checkpoint's encoder and readout to a graph; constants are named prefix + key."""

    def __init__(self, g: GraphBuilder, encoder_state: dict, readout_state: dict, prefix: str):
        self.g, self.enc, self.readout_state, self.prefix = g, encoder_state, readout_state, prefix

    def weight(self, key: str, state: dict | None = None) -> str:
        return self.g.const(self.prefix + key, _f32(_array(state or self.enc, key)))

    def conv(self, x: str, key: str, pad: int, stride: int = 1) -> str:
        kernel = list(_array(self.enc, key + ".weight").shape[2:])
        return self.g.op("Conv", [x, self.weight(key + ".weight"), self.weight(key + ".bias")],
                         kernel_shape=kernel, strides=[stride] * 2, pads=[pad] * 4)

    def batchnorm(self, x: str, key: str) -> str:
        stats = [self.weight(f"{key}.{name}") for name in ("weight", "bias", "running_mean", "running_var")]
        return self.g.op("BatchNormalization", [x, *stats], epsilon=1e-5)

    def trunk_block(self, x: str, key: str) -> str:
        # BN -> (Dropout2d: identity at inference) -> conv 3x3 pad 1 -> ReLU. BN stays a separate
        # op: folded into the padded conv it would change the border pixels.
        return self.g.op("Relu", [self.conv(self.batchnorm(x, key + ".bn1"), key + ".conv1", pad=1)])

    def first_channels(self, x: str, count: int) -> str:
        g = self.g
        return g.op("Slice", [x, g.const("start_0", np.array([0])), g.const(f"stop_{count}", np.array([count])),
                              g.const("axis_1", np.array([1]))])

    def encoder(self, pixels: str) -> list[str]:
        """Feature groups G0 [N,256,27,27], G1 [N,256,25,25], G2 [N,256,13,13] (all >= 0)."""
        g = self.g
        x = g.op("Sub", [pixels, self.weight("mu")])  # before conv1's zero padding, as upstream
        c1 = g.op("MaxPool", [g.op("Relu", [self.conv(x, "pre.conv1.0", pad=2, stride=4)])],
                  kernel_shape=[3, 3], strides=[2, 2])
        y = g.op("Relu", [self.conv(c1, "pre.conv2.0", pad=2)])
        c3 = g.op("Relu", [self.conv(self.batchnorm(y, "enc.bn1"), "enc.conv3", pad=0)])
        c4a = self.trunk_block(c3, "enc.conv4a")
        c4b = self.trunk_block(c4a, "enc.conv4b")
        pooled = g.op("MaxPool", [c4b], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
        c5a = self.trunk_block(pooled, "enc.conv5a")
        c5b = self.trunk_block(c5a, "enc.conv5b")
        c6a = self.trunk_block(c5b, "enc.conv6a")
        c6b = self.trunk_block(c6a, "enc.conv6b")
        half = [self.first_channels(t, 64) for t in (c4a, c4b, c5a, c5b, c6a)]
        return [g.op("Concat", [c1, y], axis=1),
                g.op("Concat", [c3, half[0], half[1]], axis=1),
                g.op("Concat", [half[2], half[3], half[4], c6b], axis=1)]

    def psi(self, u: str) -> str:
        """ln(1 + |u|) * tanh(u) for u >= 0: every input here is post-ReLU or a softmax-weighted
        average of such values, so |u| = u exactly and the Abs is left out."""
        g = self.g
        return g.op("Mul", [g.op("Log", [g.op("Add", [u, g.const("one", _f32(1.0))])]),
                            g.op("Tanh", [u])])

    def readout(self, groups: list[str]) -> str:
        """r[n,v] = sum_j w[v,j] psi(Phi[n,v,j]) + b[v], computed group by group.

        Phi for group k is psi(G_k) [N,256,S_k] @ softmax(rf_k)^T [S_k,V]: one GEMM whose
        right-hand side is a constant folded at export.
        """
        g, state = self.g, self.readout_state
        weights = _f32(_array(state, "w"))
        voxels = weights.shape[0]
        total = None
        for k, features in enumerate(groups):
            rf = _array(state, f"rf{k}").astype(np.float64).reshape(voxels, -1)
            softmax = np.exp(rf - rf.max(axis=1, keepdims=True))
            softmax /= softmax.sum(axis=1, keepdims=True)
            flat = g.op("Reshape", [self.psi(features), g.const("shape_n_256_s", np.array([0, 256, -1]))])
            phi = g.op("MatMul", [flat, g.const(f"{self.prefix}rf{k}_softmax_t", _f32(softmax.T))])
            block_weights = g.const(f"{self.prefix}w{k}_t", weights[:, 256 * k:256 * (k + 1)].T.copy())
            partial = g.op("ReduceSum", [g.op("Mul", [self.psi(phi), block_weights]),
                                         g.const("axis_1", np.array([1]))], keepdims=0)
            total = partial if total is None else g.op("Add", [total, partial])
        return g.op("Add", [total, self.weight("b", state)])


def build_fwrf_graph(checkpoint_parts: list[tuple[dict, dict]], doc: str = "", portable: bool = False) -> onnx.ModelProto:
    """ONNX model for one ROI from its (encoder_state, readout_state) pairs, split-1 first;
    ``portable`` resizes with standard MatMuls (onnx_graph.resized_pixels)."""
    g = GraphBuilder()
    # torchvision Resize((227, 227)) on the integer tensor, then / 255
    pixels = g.op("Div", [resized_pixels(g, (INPUT_SIZE, INPUT_SIZE), portable), g.const("scale_255", _f32(255.0))],
                  name="pixels_0_1")
    outputs = []
    for index, (encoder_state, readout_state) in enumerate(checkpoint_parts, start=1):
        part = _Part(g, encoder_state, readout_state, prefix=f"split{index}/")
        outputs.append(part.readout(part.encoder(pixels)))
    voxels = sum(len(_array(r, "b")) for _, r in checkpoint_parts)
    if len(outputs) == 1:
        g.op("Identity", outputs, name=OUTPUT_NAME)
    else:
        g.op("Concat", outputs, name=OUTPUT_NAME, axis=1)
    return g.model("nest_fwrf", doc, OUTPUT_NAME, ["N", voxels])
