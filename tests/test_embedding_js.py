"""The embedding example: tests/embedding/client.mjs (Node.js, onnxruntime-node) reads a bundle
through its JSON sidecars and .npy files only, and gives what NEST.encode gives.

tests/run.sh installs onnxruntime-node (npm ci in tests/embedding) and sets
NEST_RT_REQUIRE_NODE=1, so there a missing Node.js or package fails instead of skipping.
Tolerance: onnxruntime-node is another onnxruntime build than Python's, so the outputs are compared
within relative error 1e-5 (measured: identical, 0 difference, with onnxruntime-node 1.30 against
Python onnxruntime 1.32); a self-contained graph against the split graphs within
self_contained.SPLIT_TOLERANCE (also 1e-5).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from nest_rt import NEST
from nest_rt_export import synthetic
from nest_rt_export.self_contained import SPLIT_TOLERANCE

CLIENT = Path(__file__).parent / "embedding" / "client.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    installed = (CLIENT.parent / "node_modules" / "onnxruntime-node").is_dir()
    if node is None or not installed:
        message = "Node.js and tests/embedding/node_modules (npm ci in tests/embedding) are needed"
        if os.environ.get("NEST_RT_REQUIRE_NODE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return node


@pytest.mark.parametrize("bundle, model_id, subject, variant, form", [
    ("vit_bundle", "fmri-nsd-fwrf", "1", "V1", "split"),
    ("vit_bundle", "eeg-things_eeg_2-vit_b_32", "2", "all", "split"),
    ("vit_bundle", "fmri-nsd_fsaverage-vit_b_32", "1", "all", "split"),
    # a head with four PCA blocks (current BERG's EEG files), and the one-graph forms
    ("variants_bundle", "eeg-things_eeg_2-vit_b_32", "1", "all", "split"),
    ("variants_bundle", "eeg-things_eeg_2-vit_b_32", "1", "all", "self_contained"),
    ("variants_bundle", "fmri-nsd_fsaverage-vit_b_32", "1", "all", "self_contained")])
def test_javascript_client_gives_what_encode_gives(node, request, tmp_path, bundle, model_id, subject, variant, form):
    bundle = request.getfixturevalue(bundle)
    images = synthetic.synthetic_images(5, 240, seed=23)
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([node, str(CLIENT), str(bundle), model_id, subject, variant,
                             str(tmp_path / "images.npy"), str(tmp_path / "out")]
                            + (["--self-contained"] if form == "self_contained" else []),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["graph"].endswith(".self_contained.onnx" if form == "self_contained" else ".onnx")
    nest = NEST(bundle)
    selection = {"roi": variant} if model_id == "fmri-nsd-fwrf" else None
    expected = nest.encode(nest.get_encoding_model(model_id, subject=int(subject), selection=selection), images,
                           return_metadata=False, show_progress=False)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert [a["name"] for a in report["arrays"]] == (["lh", "rh"] if "fsaverage" in model_id else ["responses"])
    # the split graphs run here as in the runtime; a self-contained graph as onnxruntime joins them
    limit = SPLIT_TOLERANCE if form == "self_contained" else 1e-5
    for array, want in zip(report["arrays"], expected):
        got = np.load(tmp_path / "out" / f"{array['name']}.npy")
        assert got.shape == want.shape == tuple(array["shape"]) and got.dtype == np.float32
        assert np.abs(got - want).max() <= limit * np.abs(want).max()
