"""nest_rt (onnxruntime) against the independent torch reference of upstream's pipeline, end to
end, on the project's synthetic toolkits.

Tolerances (export/parity.py END_TO_END_TOLERANCE, stated in docs/parity.md): with S = 227 there is
no resize and the two agree to float32 rounding: max abs error <= 1e-5 x the response scale
(max |response|). Other sizes go through the antialiased resize, where ONNX Resize and
torchvision round about 0.002-0.2 % of pixels differently by one grey level: max abs error
<= 5e-4 x scale on these weights. Per-voxel correlation across images >= 0.99999 in both cases.
How the export checks the resize and the network apart, on weights of any scale:
tests/test_export_checks.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from nest_rt import catalog, models
from nest_rt_export import exporter, synthetic, toolkit
from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within

from conftest import SUBJECT, quiet

ALL_ROIS = catalog.rois("fmri-nsd-fwrf")
def assert_parity(reference: np.ndarray, got: np.ndarray, size: int) -> dict:
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.isfinite(got).all()
    stats = compare(reference, got)
    assert within(stats, END_TO_END_TOLERANCE["fwrf"]["native" if size == 227 else "resized"]), stats
    assert reference.std(axis=0).min() > 1e-3, "responses must vary across images"
    return stats


@pytest.mark.parametrize("roi", ALL_ROIS)
@pytest.mark.parametrize("size", [227, 180, 300])
def test_every_roi_matches_reference(nest, reference, roi, size):
    images = synthetic.synthetic_images(6, size, seed=size)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", subject=SUBJECT, roi=roi, device="cpu")
    got = nest.encode(model, images, return_metadata=False)
    assert_parity(reference(roi)(images), got, size)


@pytest.mark.parametrize("roi", ["V1", "lateral"])
def test_batch_of_one(nest, reference, roi):
    image = synthetic.synthetic_images(1, 256, seed=11)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, roi)
    got = nest.encode(model, image, return_metadata=False)
    expected = reference(roi)(image)
    assert got.shape == (1, 25)
    np.testing.assert_allclose(got, expected, atol=END_TO_END_TOLERANCE["fwrf"]["resized"]["relative_error"]
                               * np.abs(expected).max())


@pytest.mark.parametrize("roi", ["V2", "ventral"])
def test_more_images_than_internal_batch(nest, reference, roi, monkeypatch):
    monkeypatch.setattr(models, "_MAX_BATCH", 4)
    images = synthetic.synthetic_images(11, 227, seed=5)  # batches of 4, 4, 3
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, roi)
    assert model.batch_size == 4
    got = nest.encode(model, images, return_metadata=False, show_progress=False)
    assert_parity(reference(roi)(images), got, 227)
    # batching changes nothing beyond float32 rounding (GEMM blocking differs by batch size)
    singles = np.concatenate([nest.encode(model, images[i:i + 1], return_metadata=False)
                              for i in range(len(images))])
    np.testing.assert_allclose(got, singles, rtol=0, atol=1e-5 * np.abs(singles).max())


def test_default_batch_holds_many_images(nest, reference):
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "FFA-2")
    images = synthetic.synthetic_images(model.batch_size + 3, 227, seed=9)
    got = nest.encode(model, images, return_metadata=False, show_progress=False)
    assert_parity(reference("FFA-2")(images), got, 227)


def test_every_input_form_gives_the_same_responses(nest, tmp_path):
    images = synthetic.synthetic_images(3, 200, seed=21)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "hV4")
    expected = nest.encode(model, images, return_metadata=False)
    nhwc = images.transpose(0, 2, 3, 1)
    pil = [Image.fromarray(image) for image in nhwc]
    paths = []
    for index, image in enumerate(pil):
        paths.append(tmp_path / f"{index}.png")
        image.save(paths[-1])
    forms = {
        "int64 NCHW": images.astype(np.int64),
        "NHWC": nhwc,
        "PIL list": pil,
        "path list": paths,
        "str path list": [str(p) for p in paths],
        "mixed list": [pil[0], str(paths[1]), images[2]],
    }
    for name, form in forms.items():
        np.testing.assert_array_equal(nest.encode(model, form, return_metadata=False), expected,
                                      err_msg=name)
    single = nest.encode(model, paths[0], return_metadata=False)
    np.testing.assert_array_equal(single, nest.encode(model, images[:1], return_metadata=False))


def test_mixed_image_sizes_in_a_list(nest, reference):
    small = synthetic.synthetic_images(2, 160, seed=1)
    large = synthetic.synthetic_images(2, 240, seed=2)
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "OPA")
    got = nest.encode(model, [small[0], large[0], large[1], small[1]], return_metadata=False)
    ref = reference("OPA")
    expected = np.concatenate([ref(small[:1]), ref(large), ref(small[1:])])
    np.testing.assert_allclose(got, expected, atol=END_TO_END_TOLERANCE["fwrf"]["resized"]["relative_error"]
                               * np.abs(expected).max())


def test_split_roi_columns_are_split1_then_split2(nest, toolkit_dir):
    """Columns 0..12 come from split-1's checkpoint and 13..24 from split-2's."""
    from nest_rt_export.fwrf_torch import FwrfReference
    files = toolkit.fwrf_files(toolkit_dir, SUBJECT, "lateral")
    first, second = [FwrfReference.from_checkpoints([toolkit.load_checkpoint(p)], SUBJECT)
                     for p in files["weights"]]
    images = synthetic.synthetic_images(4, 227, seed=4)
    got = nest.encode(nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "lateral"), images,
                      return_metadata=False)
    np.testing.assert_allclose(got[:, :13], first(images), atol=1e-5)
    np.testing.assert_allclose(got[:, 13:], second(images), atol=1e-5)


def test_legacy_layout_exports_and_matches(tmp_path, reference):
    nest_dir = synthetic.write_toolkit(tmp_path / "legacy", subjects=[SUBJECT], rois=["V1", "ventral"],
                                       voxels=9, seed=8, layout="legacy")
    assert toolkit.detect_layout(nest_dir) == "legacy"
    bundle = exporter.export_bundle(nest_dir, tmp_path / "bundle", log=quiet)
    from nest_rt import NEST
    nest = NEST(bundle)
    assert nest.bundle.manifest["source"]["layout"] == "legacy"
    images = synthetic.synthetic_images(5, 256, seed=3)
    for roi in ("V1", "ventral"):
        got = nest.encode(nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, roi), images,
                          return_metadata=False)
        assert got.shape == (5, 9)
        assert_parity(reference(roi, nest_dir)(images), got, 256)


def test_current_layout_is_detected(toolkit_dir):
    assert toolkit.detect_layout(toolkit_dir) == "current"


def test_metadata_matches_toolkit_file(nest, toolkit_dir):
    original = toolkit.load_npy_dict(toolkit.fwrf_files(toolkit_dir, SUBJECT, "ventral")["metadata"])
    model = nest.get_encoding_model("fmri", "nsd", "fwrf", SUBJECT, "ventral")
    _, metadata = nest.encode(model, synthetic.synthetic_images(2, 227), return_metadata=True)
    same = nest.get_metadata("fmri", "nsd", "fwrf", SUBJECT, "ventral")
    for meta in (metadata, same):
        assert set(meta) == {"fmri", "encoding_models"}
        for group in original:
            assert set(meta[group]) == set(original[group])
            for key, value in original[group].items():
                np.testing.assert_array_equal(meta[group][key], value)
    assert metadata["fmri"]["roi_mask_volume"].sum() == 25 == len(metadata["fmri"]["ncsnr"])
