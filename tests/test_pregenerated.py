"""Pregenerated responses: synthetic legacy files, their conversion at export, and the reader
(upstream's files and ``nest-rt encode`` outputs)."""
from __future__ import annotations

import json
import shutil
import sys

import h5py
import numpy as np
import pytest

from nest_rt import (NEST, BundleIntegrityError, InvalidParameterError, MissingExtraError,
                     ModelNotFoundError, ParameterTypeError, ResponsesNotFoundError)
from nest_rt.bundle import BUNDLE_FORMAT, read_nested_npz, write_nested_npz
from nest_rt.responses import load_insilico_neural_responses
from nest_rt_export import exporter, synthetic, synthetic_vit, toolkit
from nest_rt_export.errors import ExportError
from nest_rt_export.pregenerated import convert_pregenerated_metadata

from conftest import assert_nest_error, quiet

IMAGES, VOXELS, EEG_SUBJECT = 8, 6, 2
PREGEN = "pregenerated_insilico_neural_responses"
FWRF_DIR = f"{PREGEN}/modality-fmri/train_dataset-nsd/model-fwrf"
EEG_DIR = f"{PREGEN}/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
FWRF_ARGS = ("fmri", "nsd", "fwrf")
EEG_ARGS = ("eeg", "things_eeg_2", "vit_b_32")


@pytest.fixture(scope="module")
def toolkit_dir(tmp_path_factory):
    """Legacy toolkit: fwRF subject 1 roi V1 and EEG subject 2, with pregenerated responses."""
    nest_dir = synthetic.write_toolkit(tmp_path_factory.mktemp("legacy"), subjects=[1], rois=["V1"],
                                       voxels=VOXELS, seed=2, layout="legacy", pregenerated_images=IMAGES)
    return synthetic_vit.write_vit_toolkit(nest_dir, eeg_subjects=[EEG_SUBJECT], layout="legacy", components=4,
                                           legacy_components=8, seed=2, pregenerated_images=IMAGES)


@pytest.fixture(scope="module")
def bundle_dir(toolkit_dir, tmp_path_factory):
    return exporter.export_bundle(toolkit_dir, tmp_path_factory.mktemp("b") / "bundle",
                                  models=["fmri-nsd-fwrf"], pregenerated=True, log=quiet)


def h5_values(path, name="synthetic_neural_responses"):
    with h5py.File(path, "r") as handle:
        return handle[name][()]


def assert_same_metadata(ours: dict, upstream: dict) -> None:
    assert set(ours) == set(upstream)
    for key, value in upstream.items():
        if isinstance(value, dict):
            assert_same_metadata(ours[key], value)
        else:
            np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(value))


# -- synthetic files -----------------------------------------------------------------------------
def test_synthetic_pregenerated_files_have_upstreams_layout(toolkit_dir):
    for imageset in ("nsd", "imagenet_val", "things"):
        fwrf = toolkit_dir / FWRF_DIR / f"imageset-{imageset}"
        eeg = toolkit_dir / EEG_DIR / f"imageset-{imageset}"
        for h5, shape in ((fwrf / "synthetic_neural_responses_sub-01_roi-V1.h5", (IMAGES, VOXELS)),
                          (eeg / "synthetic_neural_responses_sub-02.h5", (IMAGES, 4, 63, 140))):
            values = h5_values(h5)
            assert values.shape == shape and values.dtype == np.float32 and values.std() > 0.5
        for npy in (fwrf / "synthetic_neural_responses_metadata_sub-01_roi-V1.npy",
                    eeg / "synthetic_neural_responses_metadata_sub-02.npy"):
            metadata = np.load(npy, allow_pickle=True).item()  # upstream's way of reading it
            assert metadata["imageset"] == imageset and list(metadata["image_index"]) == list(range(IMAGES))
    eeg_metadata = np.load(eeg / "synthetic_neural_responses_metadata_sub-02.npy", allow_pickle=True).item()
    assert len(eeg_metadata["eeg"]["ch_names"]) == 63


def test_pregenerated_only_in_the_legacy_layout(tmp_path):
    with pytest.raises(ValueError, match="legacy"):
        synthetic.write_toolkit(tmp_path, subjects=[1], rois=["V1"], voxels=3, pregenerated_images=2)
    assert not any(tmp_path.iterdir())  # refused before writing anything


# -- conversion at export ------------------------------------------------------------------------
def test_export_converts_every_metadata_file_pickle_free(toolkit_dir, bundle_dir):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    converted = manifest["pregenerated"]["metadata"]
    assert len(converted) == 6  # 3 image sets x (fwRF V1, EEG subject 2)
    for relative, record in converted.items():
        assert relative in manifest["files"]  # sha256-checked like every bundle file
        source = toolkit_dir / record["source"]
        assert relative == record["source"].removesuffix(".npy") + ".npz"
        assert_same_metadata(read_nested_npz(bundle_dir / relative), toolkit.load_npy_dict(source))
    responses = manifest["pregenerated"]["responses"]
    assert len(responses) == 6 and not any(path.endswith(".h5") for path in manifest["files"])
    for relative, record in responses.items():
        assert record["bytes"] == (toolkit_dir / relative).stat().st_size


def test_conversion_errors(tmp_path):
    with pytest.raises(ExportError, match="holds no synthetic_neural_responses_metadata"):
        convert_pregenerated_metadata(tmp_path, tmp_path / "bundle")
    folder = tmp_path / FWRF_DIR / "imageset-nsd"
    folder.mkdir(parents=True)
    np.save(folder / "synthetic_neural_responses_metadata_sub-01_roi-V1.npy", {"notes": None}, allow_pickle=True)
    with pytest.raises(ExportError, match="cannot convert .*sub-01_roi-V1.npy pickle-free"):
        convert_pregenerated_metadata(tmp_path, tmp_path / "bundle")


# -- reading upstream's files ----------------------------------------------------------------------
def test_nest_reads_h5_lazily_with_converted_metadata(toolkit_dir, bundle_dir):
    nest = NEST(bundle_dir)
    responses, metadata = nest.load_insilico_neural_responses(*FWRF_ARGS, "things", 1, roi="V1")
    h5 = toolkit_dir / FWRF_DIR / "imageset-things/synthetic_neural_responses_sub-01_roi-V1.h5"
    assert isinstance(responses, h5py.Dataset) and responses.id.valid  # open, read on demand
    assert responses.shape == (IMAGES, VOXELS) and responses.dtype == np.float32
    np.testing.assert_array_equal(responses[2:5], h5_values(h5)[2:5])
    assert_same_metadata(metadata, toolkit.load_npy_dict(
        toolkit_dir / FWRF_DIR / "imageset-things/synthetic_neural_responses_metadata_sub-01_roi-V1.npy"))

    eeg = nest.load_insilico_neural_responses(*EEG_ARGS, "nsd", EEG_SUBJECT, roi="V1", return_metadata=False)
    assert isinstance(eeg, h5py.Dataset) and eeg.shape == (IMAGES, 4, 63, 140)  # roi ignored, as upstream


def test_module_function_searches_every_root(toolkit_dir, bundle_dir):
    responses, metadata = load_insilico_neural_responses(
        [bundle_dir, toolkit_dir], *EEG_ARGS, "imagenet_val", EEG_SUBJECT)
    assert isinstance(responses, h5py.Dataset) and metadata["eeg"]["ch_names"][:2] == ["Fp1", "F3"]
    only_responses = load_insilico_neural_responses(toolkit_dir, *FWRF_ARGS, "nsd", 1, "V1", return_metadata=False)
    assert only_responses.shape == (IMAGES, VOXELS)


def test_modified_bundle_metadata_is_detected(toolkit_dir, bundle_dir, tmp_path):
    copy = shutil.copytree(bundle_dir, tmp_path / "bundle")
    npz = copy / FWRF_DIR / "imageset-nsd/synthetic_neural_responses_metadata_sub-01_roi-V1.npz"
    write_nested_npz(npz, {"imageset": "tampered"})
    assert_nest_error(lambda: NEST(copy).load_insilico_neural_responses(*FWRF_ARGS, "nsd", 1, roi="V1"),
                      BundleIntegrityError, ["sha256", npz.name])


# -- reading nest-rt encode outputs (RUN_FORMAT.md) -----------------------------------------------
@pytest.fixture(scope="module")
def encode_out(tmp_path_factory):
    """An OUT folder as ``nest-rt encode`` writes it, for the image set 'my images-2'."""
    out = tmp_path_factory.mktemp("encode_out")
    rng = np.random.default_rng(0)
    fwrf = out / "modality-fmri/train_dataset-nsd/model-fwrf/imageset-my images-2"
    eeg = out / "modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/imageset-my images-2"
    fsaverage = out / "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/imageset-my images-2"
    arrays = {"fwrf": rng.normal(size=(3, 7)).astype(np.float32),
              "eeg": rng.normal(size=(3, 4, 63, 140)).astype(np.float32),
              "lh": rng.normal(size=(3, 5)).astype(np.float32), "rh": rng.normal(size=(3, 4)).astype(np.float32)}
    for folder in (fwrf, eeg, fsaverage):
        folder.mkdir(parents=True)
    np.save(fwrf / "synthetic_neural_responses_sub-01_roi-V1.npy", arrays["fwrf"])  # no --h5
    write_nested_npz(fwrf / "synthetic_neural_responses_metadata_sub-01_roi-V1.npz", {"fmri": {"ncsnr": np.ones(7)}})
    np.save(eeg / "synthetic_neural_responses_sub-03.npy", arrays["eeg"])
    with h5py.File(eeg / "synthetic_neural_responses_sub-03.h5", "w") as handle:  # --h5
        handle["synthetic_neural_responses"] = arrays["eeg"]
    write_nested_npz(eeg / "synthetic_neural_responses_metadata_sub-03.npz", {"eeg": {"ch_names": ["Oz"]}})
    for side in ("lh", "rh"):
        np.save(fsaverage / f"synthetic_neural_responses_sub-01_roi-V1v_{side}.npy", arrays[side])
        np.save(fsaverage / f"synthetic_neural_responses_sub-02_{side}.npy", arrays[side])
    with h5py.File(fsaverage / "synthetic_neural_responses_sub-02.h5", "w") as handle:
        handle["lh"], handle["rh"] = arrays["lh"], arrays["rh"]
    for stem in ("sub-01_roi-V1v", "sub-02"):
        write_nested_npz(fsaverage / f"synthetic_neural_responses_metadata_{stem}.npz", {"fmri": {"x": np.zeros(1)}})
    return out, arrays


def test_reads_npy_outputs_memory_mapped(encode_out):
    out, arrays = encode_out
    responses, metadata = load_insilico_neural_responses(out, *FWRF_ARGS, "my images-2", 1, roi="V1")
    assert isinstance(responses, np.memmap) and not responses.flags.writeable
    np.testing.assert_array_equal(responses, arrays["fwrf"])
    np.testing.assert_array_equal(metadata["fmri"]["ncsnr"], np.ones(7))
    lh, rh = load_insilico_neural_responses(out, "fmri", "nsd_fsaverage", "vit_b_32", "my images-2", 1,
                                            roi="V1v", return_metadata=False)
    assert isinstance(lh, np.memmap)
    np.testing.assert_array_equal(lh, arrays["lh"])
    np.testing.assert_array_equal(rh, arrays["rh"])


def test_prefers_h5_outputs_and_nest_takes_responses_dir(bundle_dir, encode_out):
    out, arrays = encode_out
    responses, metadata = NEST(bundle_dir).load_insilico_neural_responses(
        *EEG_ARGS, "my images-2", 3, responses_dir=out)
    assert isinstance(responses, h5py.Dataset) and metadata == {"eeg": {"ch_names": ["Oz"]}}
    np.testing.assert_array_equal(responses[:], arrays["eeg"])
    lh, rh = load_insilico_neural_responses(out, "fmri", "nsd_fsaverage", "vit_b_32", "my images-2", 2,
                                            return_metadata=False)
    assert isinstance(lh, h5py.Dataset) and rh.shape == arrays["rh"].shape


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, kwargs, kind, words", [
    (FWRF_ARGS + ("coco", 1), {"roi": "V1"}, ResponsesNotFoundError,
     ["imageset='coco'", "available imagesets: ['imagenet_val', 'my images-2', 'nsd', 'things']"]),
    (FWRF_ARGS + ("../nsd", 1), {"roi": "V1"}, InvalidParameterError, ["imageset", "plain folder name"]),
    (FWRF_ARGS + (3, 1), {"roi": "V1"}, ParameterTypeError, ["imageset must be a str"]),
    (FWRF_ARGS + ("nsd", 1), {}, ParameterTypeError, ["roi is required", "V1"]),
    (FWRF_ARGS + ("nsd", 1), {"roi": "V9"}, ModelNotFoundError, ["roi='V9'", "hV4"]),
    (FWRF_ARGS + ("nsd", 9), {"roi": "V1"}, ModelNotFoundError, ["subject=9", "[1, 2, 3, 4, 5, 6, 7, 8]"]),
    (FWRF_ARGS + ("nsd", "1"), {"roi": "V1"}, ParameterTypeError, ["subject must be an int"]),
    (FWRF_ARGS + ("nsd", 2), {"roi": "V1"}, ResponsesNotFoundError,
     ["synthetic_neural_responses_sub-02_roi-V1.h5", "sub-01_roi-V1.h5"]),
    (("meg", "nsd", "fwrf", "nsd", 1), {}, ModelNotFoundError, ["modality='meg'", "['fmri', 'eeg']"]),
    (("fmri", "nsd", "vit_b_32", "nsd", 1), {}, ModelNotFoundError, ["model='vit_b_32'", "fwrf"]),
    (FWRF_ARGS + ("nsd", 1), {"roi": "V1", "return_metadata": 1}, ParameterTypeError,
     ["return_metadata must be a bool"]),
])
def test_bad_arguments(toolkit_dir, encode_out, args, kwargs, kind, words):
    roots = [toolkit_dir, encode_out[0]]
    assert_nest_error(lambda: load_insilico_neural_responses(roots, *args, **kwargs), kind, words)


def test_pickled_metadata_is_refused_with_the_conversion_hint(toolkit_dir):
    assert_nest_error(lambda: load_insilico_neural_responses(toolkit_dir, *FWRF_ARGS, "nsd", 1, roi="V1"),
                      ResponsesNotFoundError,
                      ["never unpickles", f"nest-rt export --nest-dir {toolkit_dir} --out BUNDLE --pregenerated"])


def test_pickled_files_under_npz_or_npy_names_are_refused(toolkit_dir, tmp_path):
    """The runtime loads with allow_pickle=False: a pickled dict in disguise is an error, never code."""
    folder = tmp_path / "modality-fmri/train_dataset-nsd/model-fwrf/imageset-x"
    folder.mkdir(parents=True)
    pickled = toolkit_dir / FWRF_DIR / "imageset-nsd/synthetic_neural_responses_metadata_sub-01_roi-V1.npy"
    np.save(folder / "synthetic_neural_responses_sub-01_roi-V1.npy", np.zeros((2, 3), np.float32))
    shutil.copy(pickled, folder / "synthetic_neural_responses_metadata_sub-01_roi-V1.npz")
    assert_nest_error(lambda: load_insilico_neural_responses(tmp_path, *FWRF_ARGS, "x", 1, roi="V1"),
                      BundleIntegrityError, ["not a pickle-free npz", "allow_pickle=False"])
    np.savez(folder / "synthetic_neural_responses_metadata_sub-01_roi-V1.npz", names=np.array([None]))
    assert_nest_error(lambda: load_insilico_neural_responses(tmp_path, *FWRF_ARGS, "x", 1, roi="V1"),
                      BundleIntegrityError, ["not a pickle-free npz"])
    shutil.copy(pickled, folder / "synthetic_neural_responses_sub-01_roi-V1.npy")
    assert_nest_error(lambda: load_insilico_neural_responses(tmp_path, *FWRF_ARGS, "x", 1, roi="V1",
                                                             return_metadata=False),
                      BundleIntegrityError, ["not a plain numeric .npy"])


def test_h5py_missing_says_which_extra(toolkit_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    assert_nest_error(lambda: load_insilico_neural_responses(toolkit_dir, *FWRF_ARGS, "nsd", 1, roi="V1",
                                                             return_metadata=False),
                      MissingExtraError, ["needs h5py", "pip install 'nest-rt[h5]'"])


def test_missing_folders(tmp_path):
    assert_nest_error(lambda: load_insilico_neural_responses(tmp_path / "nope", *EEG_ARGS, "nsd", 1),
                      ResponsesNotFoundError, ["responses_dir", "is not a directory"])
    assert_nest_error(lambda: load_insilico_neural_responses(42, *EEG_ARGS, "nsd", 1),
                      ParameterTypeError, ["responses_dir must be a str or Path"])
    (tmp_path / "bundle.json").write_text(json.dumps({"format": BUNDLE_FORMAT, "files": {}, "models": {},
                                                      "source": {"nest_dir": str(tmp_path / "gone")}}))
    assert_nest_error(lambda: NEST(tmp_path).load_insilico_neural_responses(*EEG_ARGS, "nsd", 1),
                      ResponsesNotFoundError, [PREGEN, "pass responses_dir="])
