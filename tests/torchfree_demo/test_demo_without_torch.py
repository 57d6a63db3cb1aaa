"""The README's first command: `pip install '.[demo]'` and `nest-rt demo`, in a venv without torch.

tests/run.sh runs this in the torch-free venv after tests/torchfree, once the demo extra (onnx and
matplotlib, no torch) is installed there.
"""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.parametrize("module", ["torch", "torchvision", "sklearn"])
def test_no_torch_here(module):
    with pytest.raises(ImportError):
        importlib.import_module(module)


def test_demo_encodes_images_and_plots_them(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "demo", "--out", str(out), "--images", "5"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "without torch" in result.stdout and "not checked against torch" in result.stdout
    record = json.loads((out / "responses" / "run.json").read_text())
    assert record["status"] == "complete" and [o["selection"]["roi"] for o in record["outputs"]] == \
        ["V1", "FFA-1", "lateral"]
    for output in record["outputs"]:
        responses = np.load(out / "responses" / output["arrays"]["responses"]["file"])
        assert responses.shape[0] == 5 and np.isfinite(responses).all()
        assert responses.std(axis=0).min() > 0  # every voxel varies across the images
    assert responses.shape[1] == 7799  # lateral at subject 1's real size
    plotted = subprocess.run([sys.executable, "-m", "nest_rt.cli", "plot", str(out / "responses"), "--images", "0"],
                             capture_output=True, text=True, timeout=600)
    assert plotted.returncode == 0, plotted.stderr
    assert len(list((out / "responses" / "plots").glob("*.png"))) == 6
    listed = subprocess.run([sys.executable, "-m", "nest_rt.cli", "list", "--bundle", str(out / "bundle")],
                            capture_output=True, text=True, timeout=600)
    assert listed.returncode == 0 and "not measured" in listed.stdout
