"""int8 vs fp32 ViT backbone, end to end through EEG subject 1's head (2 threads, in-process).

Uses the bundle and images that bench_vit.py set up (run it first); quantises that bundle's
backbone with the exporter's own function into the work folder, then times backbone + head on
64 images of 425x425, batched as the runtime batches them (backbone 16 images per call, head 64),
median of 3, and compares the int8 responses with fp32.

    python benchmarks/bench_vit_int8.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from nest_rt.models import _VIT_BATCH, _VIT_HEAD_BATCH
from nest_rt_export.parity import compare
from nest_rt_export.vit_onnx import int8_backbone

WORK = Path(__file__).resolve().parent / "results" / "work_vit"
BUNDLE = WORK / "bundle_current"
HEAD = BUNDLE / "eeg-things_eeg_2-vit_b_32"
IMAGES, THREADS = 64, 2


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    int8_path = WORK / "backbone.int8.onnx"
    if not int8_path.exists():
        int8_backbone(BUNDLE / "vit_b_32" / "backbone.onnx", int8_path)
    images = np.load(WORK / "images_100x425_seed2024.npy")[:IMAGES]
    head = session(HEAD / "sub-01.head.onnx")
    weights = {"pca_matrix": np.load(HEAD / "sub-01.pca_matrix.npy"), "pca_bias": np.load(HEAD / "sub-01.pca_bias.npy"),
               "coef_t": np.load(HEAD / "sub-01.regression_coef_t.npy"),
               "intercept": np.load(HEAD / "sub-01.regression_intercept.npy")}

    def encode(backbone: ort.InferenceSession) -> np.ndarray:
        blocks = []
        for i in range(0, IMAGES, _VIT_HEAD_BATCH):
            features = np.concatenate([backbone.run(None, {"images": images[j:j + _VIT_BATCH]})[0]
                                       for j in range(i, min(i + _VIT_HEAD_BATCH, IMAGES), _VIT_BATCH)])
            blocks.append(head.run(None, {"features": features, **weights})[0])
        return np.concatenate(blocks)

    results = {}
    for name, path in (("fp32", BUNDLE / "vit_b_32" / "backbone.onnx"), ("int8", int8_path)):
        backbone = session(path)
        encode(backbone)  # warm-up
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            responses = encode(backbone)
            seconds.append(time.perf_counter() - start)
        results[name] = (IMAGES / float(np.median(seconds)), responses)
    stats = compare(results["fp32"][1], results["int8"][1])
    print(f"| precision | images/s |\n|---|---|\n| fp32 | {results['fp32'][0]:.2f} |\n| int8 | {results['int8'][0]:.2f} |")
    print(f"speed-up {results['int8'][0] / results['fp32'][0]:.2f}x; int8 vs fp32: min per-output correlation "
          f"{stats['min_correlation']:.5f}, max |diff| / max |response| {stats['relative_error']:.4f}")


if __name__ == "__main__":
    main()
