"""The runtime in an environment where torch is not installed.

tests/run.sh installs nest-rt without extras into its own venv, then runs this file against
a bundle and torch-reference responses written earlier in the run by prepare_bundle.py.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORK = Path(os.environ.get("NEST_RT_TORCHFREE_DIR", ""))
SUBJECT = 2
ROIS = ["V1", "FFA-1", "lateral"]


@pytest.fixture(scope="module")
def expected():
    assert (WORK / "expected.npz").is_file(), \
        "set NEST_RT_TORCHFREE_DIR to a folder written by tests/torchfree/prepare_bundle.py"
    with np.load(WORK / "expected.npz") as data:
        return dict(data)


@pytest.mark.parametrize("module", ["torch", "torchvision", "onnx"])
def test_export_only_packages_are_absent(module):
    with pytest.raises(ImportError):
        importlib.import_module(module)


def test_installed_package_is_under_test():
    import nest_rt
    assert "site-packages" in nest_rt.__file__, nest_rt.__file__


@pytest.mark.parametrize("size, kind", [(227, "native"), (300, "resized")])
@pytest.mark.parametrize("roi", ROIS)
def test_encodes_like_the_torch_reference(expected, roi, size, kind):
    from nest_rt import NEST
    from nest_rt_export.parity import FWRF_TOLERANCE, compare, within  # numpy-only module
    nest = NEST(WORK / "bundle")
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", subject=SUBJECT, roi=roi)
    responses, metadata = nest.encode(model, expected[f"images_{size}"])
    reference = expected[f"expected_{size}_{roi}"]
    assert responses.shape == reference.shape == (5, 40) and responses.dtype == np.float32
    stats = compare(reference, responses)
    assert within(stats, FWRF_TOLERANCE[kind]), stats
    assert metadata["fmri"]["roi_mask_volume"].sum() == 40


def test_bad_input_is_still_a_clear_error(expected):
    from nest_rt import NEST, StimulusError
    nest = NEST(WORK / "bundle")
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1")
    with pytest.raises(StimulusError, match="square"):
        nest.encode(model, expected["images_227"][:, :, :, :100])


def test_export_command_explains_the_missing_extra(tmp_path):
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "export", "--nest-dir", str(tmp_path),
                             "--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'nest-rt[export]'" in result.stderr and "Traceback" not in result.stderr
