"""Every kind of graph an export writes loads and runs on the onnxruntime under test.

tests/run.sh runs this folder with the newest onnxruntime and with the oldest that pyproject.toml
admits (1.18.1): the bundles are claimed to load on both. The lower-precision backbones are
written by onnxruntime's quantiser and onnx converters, and the self-contained graphs join two
graphs; any of them could carry an IR version or opset that an older onnxruntime refuses. The
bundles are those of prepare_bundle.py: 'bundle' (both backbones in fp32, int8 and fp16) and
'variants' (the untrained AlexNet, --portable --self-contained).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

WORK = Path(os.environ.get("NEST_RT_TORCHFREE_DIR", ""))
BACKBONES = ["vit_b_32", "alexnet_untrained"]  # those of prepare_bundle.py's bundle
IMAGE_SIZE = 300  # not a backbone's native size: the in-graph resize runs too


def _manifest(name: str) -> dict:
    path = WORK / name / "bundle.json"
    assert path.is_file(), "set NEST_RT_TORCHFREE_DIR to a folder written by tests/torchfree/prepare_bundle.py"
    return json.loads(path.read_text(encoding="utf-8"))


def _run_one_image(graph: Path, precision: str = "fp32") -> np.ndarray:
    """The graph's output for one uint8 image, from a CPU session of the onnxruntime under test."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if precision == "fp16":  # meant for CUDA; on the CPU as the exporter measures it, unoptimised
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, size=(1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    return session.run(None, {"images": image})[0]


@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_precision_loads_and_runs(backbone, precision):
    entry = _manifest("bundle")["backbones"][backbone]
    graph = entry["graph"] if precision == "fp32" else entry["precisions"][precision]["graph"]
    features = _run_one_image(WORK / "bundle" / graph, precision)
    assert features.shape == (1, entry["features"]) and np.isfinite(features).all()


def test_portable_and_self_contained_graphs_load_and_run():
    manifest = _manifest("variants")
    assert manifest["portable"]
    (backbone,) = manifest["backbones"].values()
    features = _run_one_image(WORK / "variants" / backbone["graph"])
    assert features.shape == (1, backbone["features"]) and np.isfinite(features).all()
    self_contained = [record["self_contained"]["graph"] for model in manifest["models"].values()
                      for variants in model["graphs"].values() for record in variants.values()]
    assert self_contained
    for graph in self_contained:
        responses = _run_one_image(WORK / "variants" / graph)
        assert responses.shape[0] == 1 and np.isfinite(responses).all(), graph
