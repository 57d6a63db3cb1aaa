"""Bad input gets a clear error that names the argument, with built-in base classes kept."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import nest_rt
from nest_rt import NEST, errors
from nest_rt_export import synthetic

from conftest import SUBJECT, assert_nest_error

GOOD = synthetic.synthetic_images(2, 64, seed=0)


@pytest.fixture(scope="module")
def v1(nest):
    return nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1")


@pytest.mark.parametrize("call, kind, words", [
    (lambda n: n.which_train_datasets("meg"), ValueError, ["modality", "'meg'", "'fmri'", "'eeg'"]),
    (lambda n: n.which_models("fmri", "things"), ValueError, ["train_dataset", "'nsd'"]),
    (lambda n: n.which_subjects("eeg", "nsd"), ValueError, ["train_dataset", "things_eeg_2"]),
    (lambda n: n.which_rois("things_eeg_2"), ValueError, ["train_dataset", "'nsd'"]),
    (lambda n: n.which_train_datasets(1), TypeError, ["modality", "str"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "alexnet", 1, "V1"), ValueError, ["model", "fwrf"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 9, "V1"), ValueError, ["subject", "9", "[1, 2"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", "1", "V1"), TypeError, ["subject", "int"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", True, "V1"), TypeError, ["subject"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, "V9"), ValueError, ["roi", "'V9'", "'hV4'"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1), TypeError, ["roi", "required", "'V1'"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, 5), TypeError, ["roi", "str"]),
    (lambda n: n.get_encoding_model("fmri", "nsd", "fwrf", 1, "V1", device="tpu"), ValueError,
     ["device", "'tpu'", "'cuda'"]),
    (lambda n: n.get_metadata("fmri", "nsd", "fwrf", 0, "V1"), ValueError, ["subject", "0"]),
])
def test_unknown_choices_list_valid_values(nest, call, kind, words):
    assert_nest_error(lambda: call(nest), kind, words)


def test_cuda_that_falls_back_to_cpu_is_an_error(nest, monkeypatch):
    """onnxruntime-gpu silently runs on the CPU when the CUDA libraries fail to load."""
    import onnxruntime
    real_session = onnxruntime.InferenceSession
    requested = []

    def session_without_cuda(path, sess_options=None, providers=None):
        requested.append(providers)
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session_without_cuda)
    with pytest.raises(ValueError, match="could not start CUDAExecutionProvider"):
        nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1", device="auto")
    assert requested == [["CUDAExecutionProvider", "CPUExecutionProvider"]]


def test_cuda_without_provider_is_a_clear_error(nest, monkeypatch):
    import onnxruntime
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="device='cuda'.*gpu"):
        nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1", device="cuda")
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1", device="auto")
    assert model.device == "cpu"


def test_roi_missing_from_bundle_says_how_to_export(tmp_path, toolkit_dir):
    from nest_rt_export import exporter
    bundle = exporter.export_bundle(toolkit_dir, tmp_path / "b", rois=["V1"], log=lambda m: None)
    nest = NEST(bundle)
    with pytest.raises(nest_rt.NotExportedError) as info:
        nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "lateral")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "nest-rt export" in message and "--rois lateral" in message and str(toolkit_dir) in message
    assert "--subjects 1" in message and "--models fmri-nsd-fwrf" in message


@pytest.mark.parametrize("images, kind, words", [
    (GOOD[0], ValueError, ["4-D", "(3, 64, 64)", "images[None]"]),
    (GOOD[:, :2], ValueError, ["3 colour channels", "(2, 2, 64, 64)"]),
    (GOOD[:, :, :, :50], ValueError, ["square", "64", "50"]),
    (GOOD[:0], ValueError, ["empty"]),
    (np.zeros((2, 3, 0, 0), np.uint8), ValueError, ["size 0 x 0"]),
    ([GOOD], ValueError, ["images[0]", "3-D", "(2, 3, 64, 64)"]),
    (GOOD.astype(np.float32), TypeError, ["integers 0..255", "float32"]),
    (GOOD.astype(bool), TypeError, ["bool"]),
    (GOOD.astype(np.int16) + 200, ValueError, ["0..255", "max"]),
    (GOOD.astype(np.int32) - 1, ValueError, ["0..255", "min -1"]),
    ([], ValueError, ["empty list"]),
    ({"a": 1}, TypeError, ["numpy array", "dict"]),
    ([GOOD[0], 3], TypeError, ["images[1]", "int"]),
    (["/no/such/image.png"], FileNotFoundError, ["images[0]", "/no/such/image.png"]),
])
def test_bad_images(nest, v1, images, kind, words):
    with pytest.raises(kind) as info:
        nest.encode(v1, images)
    assert isinstance(info.value, errors.StimulusError)
    for word in words:
        assert word in str(info.value)


def test_non_square_and_unreadable_files(nest, v1, tmp_path):
    from PIL import Image
    Image.new("RGB", (40, 30)).save(tmp_path / "wide.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="square.*40.*30"):
        nest.encode(v1, [tmp_path / "wide.png"])
    with pytest.raises(FileNotFoundError, match="cannot read .*junk.png"):
        nest.encode(v1, [tmp_path / "junk.png"])


def test_non_rgb_pil_images_are_converted(nest, v1):
    from PIL import Image
    gray = Image.fromarray(GOOD[0, 0])
    got = nest.encode(v1, gray, return_metadata=False)
    expected = nest.encode(v1, np.repeat(GOOD[:1, :1], 3, axis=1), return_metadata=False)
    np.testing.assert_array_equal(got, expected)


def test_truncated_image_file_names_the_file(nest, v1, tmp_path):
    from PIL import Image
    Image.fromarray(GOOD[0].transpose(1, 2, 0)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])  # the header still reads fine
    with pytest.raises(FileNotFoundError, match=r"images\[1\]: cannot decode .*cut.png"):
        nest.encode(v1, [GOOD[1], tmp_path / "cut.png"])


def test_num_threads_is_checked(bundle_dir):
    for bad in ("2", 0, -3, 1.5, True):
        with pytest.raises(ValueError, match="num_threads must be None or an int >= 1"):
            NEST(bundle_dir, num_threads=bad)


def test_encode_argument_types(nest, v1):
    with pytest.raises(TypeError, match="return_metadata must be a bool"):
        nest.encode(v1, GOOD, return_metadata="yes")
    with pytest.raises(TypeError, match="show_progress must be a bool"):
        nest.encode(v1, GOOD, show_progress=None)
    with pytest.raises(TypeError, match="encoding_model must be the object returned by get_encoding_model"):
        nest.encode({"args": {}}, GOOD)


def test_non_finite_output_is_an_error(nest, v1, monkeypatch):
    session = v1._sessions.get("cpu")

    class NaNSession:
        def run(self, outputs, feeds):
            result = session.run(outputs, feeds)
            result[0][0, 3] = np.nan
            return result
    monkeypatch.setitem(v1._sessions._by_device, "cpu", NaNSession())
    with pytest.raises(FloatingPointError, match=r"NaN or infinite responses for images \[0\]"):
        nest.encode(v1, GOOD)


# -- bundle damage ------------------------------------------------------------------------------
@pytest.fixture
def bundle_copy(bundle_dir, tmp_path):
    return shutil.copytree(bundle_dir, tmp_path / "copy")


def test_missing_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundle.json.*nest-rt export"):
        NEST(tmp_path / "nothing")
    with pytest.raises(TypeError, match="bundle_dir"):
        NEST(3)


def test_unreadable_bundle_manifest(bundle_copy):
    (bundle_copy / "bundle.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="not valid JSON"):
        NEST(bundle_copy)
    (bundle_copy / "bundle.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(ValueError, match="format 'other/9'"):
        NEST(bundle_copy)


def test_missing_graph_file(bundle_copy):
    (bundle_copy / "fmri-nsd-fwrf" / "sub-01_roi-V1.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="sub-01_roi-V1.onnx"):
        NEST(bundle_copy).get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V1")


def test_truncated_graph_fails_its_checksum(bundle_copy):
    graph = bundle_copy / "fmri-nsd-fwrf" / "sub-01_roi-V2.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupted or was modified: sha256"):
        NEST(bundle_copy).get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V2")


def test_corrupted_graph_with_matching_manifest_is_a_load_error(bundle_copy):
    """Even a graph whose recorded sha256 was edited to match is refused by onnxruntime, cleanly."""
    from nest_rt.bundle import sha256_file
    graph = bundle_copy / "fmri-nsd-fwrf" / "sub-01_roi-V3.onnx"
    graph.write_bytes(graph.read_bytes()[:1000])
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    manifest["files"]["fmri-nsd-fwrf/sub-01_roi-V3.onnx"]["sha256"] = sha256_file(graph)
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(errors.ModelLoadError, match="onnxruntime could not load"):
        NEST(bundle_copy).get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "V3")


def test_missing_and_modified_metadata(bundle_copy):
    nest = NEST(bundle_copy)
    (bundle_copy / "fmri-nsd-fwrf" / "sub-01_roi-OFA.metadata.npz").unlink()
    with pytest.raises(FileNotFoundError, match="OFA.metadata.npz"):
        nest.get_metadata("fmri", "nsd", "fwrf", SUBJECT, "OFA")
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "OFA")
    with pytest.raises(FileNotFoundError, match="OFA.metadata.npz"):
        nest.encode(model, GOOD, return_metadata=True)
    (bundle_copy / "fmri-nsd-fwrf" / "sub-01_roi-PPA.metadata.npz").write_bytes(b"PK junk")
    with pytest.raises(ValueError, match="sha256"):
        nest.get_metadata("fmri", "nsd", "fwrf", SUBJECT, "PPA")
