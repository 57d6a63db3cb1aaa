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


def test_the_onnxruntime_under_test_is_the_one_asked_for():
    """tests/run.sh runs this file with the newest onnxruntime and with the oldest that
    pyproject.toml admits ('onnxruntime==1.18.1'); the bundles must load on both."""
    import onnxruntime
    asked = os.environ.get("NEST_RT_EXPECT_ONNXRUNTIME", "onnxruntime")
    if "==" in asked:
        wanted = asked.split("==")[1].split(".")
        assert onnxruntime.__version__.split(".")[:len(wanted)] == wanted, (asked, onnxruntime.__version__)


@pytest.mark.parametrize("size, kind", [(227, "native"), (300, "resized")])
@pytest.mark.parametrize("roi", ROIS)
def test_encodes_like_the_torch_reference(expected, roi, size, kind):
    from nest_rt import NEST
    from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within  # numpy-only module
    nest = NEST(WORK / "bundle")
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", subject=SUBJECT, roi=roi)
    responses, metadata = nest.encode(model, expected[f"images_{size}"])
    reference = expected[f"expected_{size}_{roi}"]
    assert responses.shape == reference.shape == (5, 40) and responses.dtype == np.float32
    stats = compare(reference, responses)
    assert within(stats, END_TO_END_TOLERANCE["fwrf"][kind]), stats
    assert metadata["fmri"]["roi_mask_volume"].sum() == 40


@pytest.mark.parametrize("size, kind", [(256, "native"), (300, "resized")])
def test_vit_models_like_the_torch_reference(expected, size, kind):
    from nest_rt import NEST
    from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within
    nest = NEST(WORK / "bundle")
    images = expected[f"images_{size}"]
    eeg_legacy = nest.get_encoding_model("eeg", "things_eeg_2", "vit_b_32", SUBJECT)
    fsaverage = nest.get_encoding_model("fmri-nsd_fsaverage-vit_b_32", subject=SUBJECT,
                                        selection={"roi": "V1v"})  # FSAVERAGE_ROI of prepare_bundle.py
    eeg, (lh, rh) = nest.encode_many([eeg_legacy, fsaverage], images)
    assert eeg.shape == (5, 4, 63, 140)
    assert within(compare(expected[f"expected_{size}_eeg"], eeg), END_TO_END_TOLERANCE["vit_b_32"][kind])
    got = np.concatenate([lh, rh], axis=1)
    reference = np.concatenate([expected[f"expected_{size}_fsaverage_lh"],
                                expected[f"expected_{size}_fsaverage_rh"]], axis=1)
    assert within(compare(reference, got), END_TO_END_TOLERANCE["vit_b_32"][kind])


@pytest.mark.parametrize("size, kind", [(227, "resized"), (256, "native"), (300, "resized")])
def test_berg_meg_and_utah_array_models_like_the_reference(expected, size, kind):
    from nest_rt import BERG
    from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within
    berg = BERG(WORK / "bundle")
    images = expected[f"berg_images_{size}"]
    meg = berg.get_encoding_model("meg-things_meg_1-vit_b_32", subject=SUBJECT,
                                  selection={"region": ["Occipital"]})  # MEG_SELECTION of prepare_bundle.py
    tvsd = berg.get_encoding_model("utah_array-tvsd-vit_b_32", subject="F", selection={"roi": ["V4"]})
    for name, responses in zip(("meg", "tvsd"), berg.encode_many([meg, tvsd], images, show_progress=False)):
        reference = expected[f"expected_{size}_{name}"]
        assert responses.shape == reference.shape and responses.shape[-1] == {"meg": 281, "tvsd": 300}[name]
        assert within(compare(reference, responses), END_TO_END_TOLERANCE["vit_b_32"][kind]), name


@pytest.mark.parametrize("size, kind", [(256, "native"), (300, "resized")])
def test_untrained_alexnet_eeg_like_the_reference(expected, size, kind):
    from nest_rt import BERG
    from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within
    berg = BERG(WORK / "bundle")
    model = berg.get_encoding_model("eeg-things_eeg_2-alexnet_untrained", subject=SUBJECT,
                                    selection={"channels": ["O1", "Oz", "O2"]})  # ALEXNET_SELECTION
    responses = berg.encode(model, expected[f"berg_images_{size}"], show_progress=False)
    reference = expected[f"expected_{size}_alexnet_untrained"]
    assert responses.shape == reference.shape == (8, 4, 3, 140)
    assert within(compare(reference, responses), END_TO_END_TOLERANCE["alexnet"][kind])


def test_encode_many_mixes_fwrf_and_vit_models(expected):
    """A large fwRF ROI (small internal batches) next to ViT models (batches of 16) gives what
    each model gives alone."""
    from nest_rt import NEST
    nest = NEST(WORK / "bundle")
    images = np.concatenate([expected["images_300"]] * 4)  # 20 images: more than one ViT batch
    models = [nest.get_encoding_model("fmri-nsd-fwrf", subject=SUBJECT, selection={"roi": "lateral"}),
              nest.get_encoding_model("eeg-things_eeg_2-vit_b_32", subject=SUBJECT)]
    together = nest.encode_many(models, images, show_progress=False)
    for model, responses in zip(models, together):
        alone = nest.encode(model=model, stimulus=images)
        np.testing.assert_allclose(responses, alone, rtol=0, atol=1e-5 * np.abs(alone).max())


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


def test_ray_engine_explains_the_missing_extra(expected, tmp_path):
    """The runtime never needs Ray: only --engine ray asks for it, before anything is written."""
    np.save(tmp_path / "images.npy", expected["images_300"])
    result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "encode", str(tmp_path / "images.npy"), "--bundle",
                             str(WORK / "bundle"), "--model", "fwrf:roi=V1", "--out", str(tmp_path / "run"),
                             "--engine", "ray"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "pip install 'nest-rt[ray]'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_encodes_shards_merges_and_reads_back_without_torch(expected, tmp_path):
    """The command-line path at scale (encode -> shards -> merge -> HDF5 -> load) with the
    runtime alone; responses equal the API's on the same images."""
    from nest_rt import NEST
    images = np.concatenate([expected["images_300"]] * 2)  # 10 images
    np.save(tmp_path / "images.npy", images)
    common = ["--bundle", str(WORK / "bundle"), "--model", "fwrf:roi=V1", "--model", f"eeg:subjects={SUBJECT}",
              "--chunk-size", "3", "--h5", "--no-progress", "--imageset", "probe"]
    for shard in ("0/2", "1/2"):
        result = subprocess.run([sys.executable, "-m", "nest_rt.cli", "encode", str(tmp_path / "images.npy"),
                                 *common, "--shard", shard, "--out", str(tmp_path / shard.replace("/", "of"))],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    merged = subprocess.run([sys.executable, "-m", "nest_rt.cli", "merge", str(tmp_path / "0of2"),
                             str(tmp_path / "1of2"), "--out", str(tmp_path / "merged")], capture_output=True, text=True)
    assert merged.returncode == 0, merged.stderr
    nest = NEST(WORK / "bundle")
    stored, metadata = nest.load_insilico_neural_responses("eeg", "things_eeg_2", "vit_b_32", "probe", SUBJECT,
                                                           responses_dir=tmp_path / "merged")
    eeg = nest.get_encoding_model("eeg-things_eeg_2-vit_b_32", subject=SUBJECT)
    direct = nest.encode(eeg, images, show_progress=False)
    np.testing.assert_allclose(stored[:], direct, rtol=0, atol=1e-5 * np.abs(direct).max())
    assert metadata["eeg"]["ch_names"][:3] == ["Fp1", "F3", "F7"]
    assert "torch" not in sys.modules
