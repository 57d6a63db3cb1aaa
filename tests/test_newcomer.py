"""A newcomer's path: the demo covers every model family, synthetic toolkits of every family,
plots that show the images as the models saw them. (The torch-free demo of the README's first
command runs in tests/torchfree_demo, in a venv without torch.)"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nest_rt import demo
from nest_rt.image_files import load_image
from nest_rt_export import toolkit

from conftest import quiet


def test_the_demo_covers_every_family(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_COMPONENTS", 6)  # 250 in the real demo: 0.5 GB per ViT head
    messages = []
    record = demo.run_demo(tmp_path / "demo", None, ["V1", "lateral"], images=3, log=messages.append)
    assert [o["model_id"] for o in record["outputs"]] == ["fmri-nsd-fwrf"] * 2 + [
        "eeg-things_eeg_2-vit_b_32", "fmri-nsd_fsaverage-vit_b_32"]
    eeg = np.load(tmp_path / "demo" / "responses" / record["outputs"][2]["arrays"]["responses"]["file"])
    assert eeg.shape == (3, 4, 63, 140) and np.isfinite(eeg).all()
    assert any("checked against the torch reference" in m for m in messages)
    manifest = json.loads((tmp_path / "demo" / "bundle" / "bundle.json").read_text())
    assert manifest["models"]["eeg-things_eeg_2-vit_b_32"]["graphs"]["1"]["all"]["parity"]["size_256"]["network"]


def test_the_runtime_only_demo_needs_onnx_not_torch(tmp_path):
    messages = []
    record = demo.run_demo(tmp_path / "demo", None, ["FFA-2"], images=2, runtime_only=True, log=messages.append)
    assert [o["name"] for o in record["outputs"]] == ["fmri-nsd-fwrf_sub-01_roi-FFA-2"]
    assert any("not checked against torch" in m for m in messages)


def test_synthetic_toolkits_of_every_family(tmp_path):
    out = tmp_path / "toolkit"
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "synthetic-toolkit", "--out", str(out),
                             "--models", "fwrf", "eeg", "fsaverage", "--subjects", "2", "--rois", "V1",
                             "--voxels", "10", "--components", "4"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "--weights vit_b_32=" in result.stdout
    assert toolkit.available_fwrf(out) == {2: ["V1"]}
    assert list(toolkit.available_heads(out, "eeg-things_eeg_2-vit_b_32")) == [2]
    assert list(toolkit.available_heads(out, "fmri-nsd_fsaverage-vit_b_32")) == [2]
    head = toolkit.load_npy_dict(toolkit.head_files(out, "fmri-nsd_fsaverage-vit_b_32", 2)["weights"])
    assert head["pca_param"]["components_"].shape == (4, 460800)


def test_thumbnails_are_what_the_models_saw_and_are_named(vit_bundle, tmp_path):
    pytest.importorskip("matplotlib")
    from nest_rt.plots import _image_label, _thumbnail, plot_run
    from nest_rt.runs import RunInputs, encode_run
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(10):
        size = (80, 60) if index == 3 else (64, 64)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"p{index}.png")
    out = tmp_path / "run"
    encode_run(vit_bundle, RunInputs([str(folder)], center_crop=True, report=quiet), ["fwrf:roi=V1"], out,
               imageset="set", show_progress=False, log=quiet)
    record = json.loads((out / "run.json").read_text())
    np.testing.assert_array_equal(_thumbnail(out, record, 3), load_image(str(folder / "p3.png")).transpose(1, 2, 0))
    assert _thumbnail(out, record, 3).shape == (60, 60, 3) and _image_label(record, 3) == "p3.png"
    # more rows than fit one page of thumbnails: more pages, not silence
    written = plot_run(out, tmp_path / "plots", images=list(range(10)))
    assert [p.name for p in written] == ["fmri-nsd-fwrf_sub-01_roi-V1.png", "fmri-nsd-fwrf_sub-01_roi-V1_images.png",
                                         "fmri-nsd-fwrf_sub-01_roi-V1_images_2.png"]
