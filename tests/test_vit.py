"""EEG (THINGS EEG2) and fsaverage ViT-B/32 models: parity, selections, shared backbone, errors.

The backbone is the real ViT-B/32 architecture (random weights, full 460,800 features, exported
once per session); heads use 12 PCA components instead of 250 to keep toolkits small.
Tolerance end to end, on the project's synthetic toolkits: export/parity.py
END_TO_END_TOLERANCE['vit_b_32'] (relative error <= 1e-5 and correlation per output >= 0.99999 at
S = 256 where no resize happens; <= 1e-3 and >= 0.9999 for resized images).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from nest_rt import NEST
from nest_rt_export import exporter, synthetic, synthetic_vit, toolkit
from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within

from berg_reference import vit_extractor, vit_features
from head_responses import reference_eeg, reference_fsaverage

from conftest import assert_nest_error, count_backbone_calls, quiet

EEG, FSAVERAGE = "eeg-things_eeg_2-vit_b_32", "fmri-nsd_fsaverage-vit_b_32"
VERTICES = 163842


@pytest.fixture(scope="module")
def nest(vit_bundle):
    return NEST(vit_bundle)


@pytest.fixture(scope="module")
def features(vit_toolkit):
    """features(images) -> the torch reference's backbone features."""
    extractor = vit_extractor(vit_toolkit / synthetic_vit.VIT_WEIGHTS_NAME)
    return lambda images: vit_features(extractor, images)


def assert_parity(expected, got, size):
    assert got.dtype == np.float32 and got.shape == expected.shape and np.isfinite(got).all()
    stats = compare(expected, got)
    assert within(stats, END_TO_END_TOLERANCE["vit_b_32"]["native" if size == 256 else "resized"]), stats
    assert expected.reshape(len(expected), -1).std(axis=0).min() > 1e-3


@pytest.mark.parametrize("size", [256, 224, 300])
def test_eeg_matches_reference(nest, vit_toolkit, features, size):
    images = synthetic.synthetic_images(5, size, seed=size)
    model = nest.get_encoding_model("eeg", "things_eeg_2", "vit_b_32", subject=2)
    got, metadata = nest.encode(model, images)
    assert got.shape == (5, 4, 63, 140)
    assert_parity(reference_eeg(features(images), toolkit.load_head(vit_toolkit, "eeg-things_eeg_2-vit_b_32", 2)[0]), got, size)
    assert metadata["eeg"]["ch_names"][:3] == ["Fp1", "F3", "F7"] and len(metadata["eeg"]["times"]) == 140


def test_eeg_legacy_layout_matches_reference(tmp_path, features):
    nest_dir = synthetic_vit.write_vit_toolkit(tmp_path / "legacy", eeg_subjects=[3], layout="legacy",
                                               components=12, legacy_components=40, seed=4)
    assert toolkit.eeg_layout(nest_dir) == "legacy" and toolkit.detect_layout(nest_dir) == "legacy"
    bundle = exporter.export_bundle(nest_dir, tmp_path / "bundle", vit_weights=nest_dir / synthetic_vit.VIT_WEIGHTS_NAME,
                                    log=quiet)
    images = synthetic.synthetic_images(4, 256, seed=1)
    got = NEST(bundle).encode(NEST(bundle).get_encoding_model(EEG, subject=3), stimulus=images)
    weights = toolkit.load_head(nest_dir, "eeg-things_eeg_2-vit_b_32", 3)[0]
    assert weights["pca_param"]["components_"].shape == (40, 460800)  # 1000 in real legacy files
    assert_parity(reference_eeg(features(images), weights), got, 256)
    sidecar = json.loads((bundle / "eeg-things_eeg_2-vit_b_32" / "sub-03.json").read_text())
    assert sidecar["toolkit_format"]["layout"] == "legacy" and sidecar["components"] == 12


def test_backbone_uses_onnxruntime_fused_attention_and_gelu(vit_bundle):
    """The exported backbone runs onnxruntime's fused kernels (the parity tests above hold it to
    torchvision's unfused modules); a changed onnxscript that stops fusing would show here."""
    import onnx
    graph = onnx.load(vit_bundle / "vit_b_32" / "backbone.onnx", load_external_data=False)
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("MultiHeadAttention") == 12 and ops.count("BiasGelu") == 12
    assert "Erf" not in ops and "Softmax" not in ops
    recorded = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(recorded["nest_rt.fused_ops"])["multi_head_attention"] == 12


@pytest.mark.parametrize("size", [256, 300])
def test_fsaverage_all_vertices_match_reference(nest, vit_toolkit, features, size):
    images = synthetic.synthetic_images(4, size, seed=size + 1)
    lh, rh = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1), stimulus=images)
    assert lh.shape == rh.shape == (4, VERTICES)
    weights = toolkit.load_npy_dict(toolkit.head_files(vit_toolkit, "fmri-nsd_fsaverage-vit_b_32", 1)["weights"])
    expected = reference_fsaverage(features(images), weights)
    assert_parity(np.concatenate(expected, axis=1), np.concatenate([lh, rh], axis=1), size)


def test_fsaverage_roi_and_vertex_selections(nest, vit_toolkit, features):
    images = synthetic.synthetic_images(3, 300, seed=8)
    weights = toolkit.load_npy_dict(toolkit.head_files(vit_toolkit, "fmri-nsd_fsaverage-vit_b_32", 1)["weights"])
    rois = toolkit.load_npy_dict(toolkit.head_files(vit_toolkit, "fmri-nsd_fsaverage-vit_b_32", 1)["metadata"])["fmri"]
    lh_rows, rh_rows = rois["lh_fsaverage_rois"]["FFA-1"], rois["rh_fsaverage_rois"]["FFA-1"]
    model = nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "FFA-1"})
    assert model.outputs == len(lh_rows) + len(rh_rows) < 2 * VERTICES  # only those columns are computed
    lh, rh = nest.encode(model, stimulus=images)
    expected = reference_fsaverage(features(images), weights, lh_rows, rh_rows)
    assert_parity(np.concatenate(expected, axis=1), np.concatenate([lh, rh], axis=1), 300)
    # masks: lh only some vertices, rh left out means all of rh
    mask = np.zeros(VERTICES, dtype=int)
    mask[[5, 100, 163841]] = 1
    lh_m, rh_m = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1, selection={"lh_vertices": mask}),
                             stimulus=images)
    full_lh, full_rh = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1), stimulus=images)
    np.testing.assert_array_equal(lh_m, full_lh[:, [5, 100, 163841]])
    np.testing.assert_array_equal(rh_m, full_rh)


def test_owfa_is_reachable_under_both_names(nest):
    """The model card says 'OVWFA', the ROI dictionaries 'OWFA' (upstream Q13)."""
    a = nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "OVWFA"})
    b = nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "OWFA"})
    assert a.outputs == b.outputs > 0


def test_eeg_channel_and_time_selection(nest):
    images = synthetic.synthetic_images(1, 256, seed=2)
    full = nest.encode(nest.get_encoding_model(EEG, subject=1), stimulus=images)
    timepoints = np.zeros(140, dtype=int)
    timepoints[[0, 50, 139]] = 1
    model = nest.get_encoding_model(EEG, subject=1, selection={"channels": ["Oz", "Fp1", "Oz"],
                                                               "timepoints": timepoints})
    assert model.outputs == 4 * 3 * 3
    got = nest.encode(model, stimulus=images)
    assert got.shape == (1, 4, 3, 3)  # no squeezing of N = 1 (upstream Q2)
    np.testing.assert_array_equal(got, full[:, :, [15, 0, 15]][:, :, :, [0, 50, 139]])
    one_channel = nest.encode(nest.get_encoding_model(EEG, subject=1, selection={"channels": ["Cz"]}),
                              stimulus=images)
    assert one_channel.shape == (1, 4, 1, 140)


def test_encode_many_shares_the_backbone(nest, monkeypatch):
    images = synthetic.synthetic_images(20, 256, seed=3)  # two batches of 16 and 4
    models = [nest.get_encoding_model(EEG, subject=s) for s in (1, 2)]
    models.append(nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V2d"}))
    separate = [nest.encode(m, stimulus=images) for m in models]
    calls = count_backbone_calls(nest, monkeypatch)
    together = nest.encode_many(models, images, show_progress=False)
    assert calls == [16, 4], "the backbone must run once per batch for all models"
    np.testing.assert_array_equal(together[0], separate[0])
    np.testing.assert_array_equal(together[1], separate[1])
    for a, b in zip(together[2], separate[2]):
        np.testing.assert_array_equal(a, b)


def test_large_heads_are_streamed_per_chunk_with_the_same_results(nest, monkeypatch):
    """Heads too large to keep together (here: a budget of 0 bytes) are read per chunk of images
    whose features are kept, run once per chunk, and dropped; the responses do not change."""
    from nest_rt import encode_loop
    images = synthetic.synthetic_images(13, 256, seed=5)
    models = [nest.get_encoding_model(EEG, subject=s) for s in (1, 2)]
    models.append(nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V2d"}))
    resident = nest.encode_many(models, images, show_progress=False)
    assert all(m.head._kept is not None for m in models), "within the budget, weights stay loaded"
    monkeypatch.setattr(encode_loop, "_RESIDENT_WEIGHT_BYTES", 0)
    monkeypatch.setattr(encode_loop, "_STREAMED_CHUNK_BYTES", 8 * 460_800 * 4)  # 8 images of the ViT's features
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda path, *a, **k: reads.append(
        (Path(path).name, k.get("mmap_mode"))) or real_load(path, *a, **k))
    head_calls = []
    for model in models[:1]:
        session = model.head.sessions.get("cpu")

        class CountingHead:
            def run(self, outputs, feeds, session=session):
                head_calls.append(len(feeds["features"]))
                return session.run(outputs, feeds)

            def get_inputs(self, session=session):
                return session.get_inputs()
        monkeypatch.setitem(model.head.sessions._by_device, "cpu", CountingHead())
    streamed = nest.encode_many(models, images, show_progress=False)
    assert head_calls == [8, 5], "one head call per chunk of 8 images"
    matrix_reads = [name for name, mode in reads if name.endswith("pca_matrix.npy") and mode is None]
    assert len(matrix_reads) == 2 * 3, "each head's PCA matrix is read once per chunk"
    assert all(m.head._kept is None and m._regression is None for m in models), "nothing kept after"
    for got, want in zip(streamed, resident):
        for a, b in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max(initial=1))


def test_device_bound_head_weights_give_the_same_responses(nest, monkeypatch):
    """The CUDA path binds head weights as device OrtValues once (IO binding); run here with
    CPU OrtValues, it must give exactly what plain numpy inputs give."""
    from nest_rt import models as model_module
    images = synthetic.synthetic_images(3, 256, seed=9)
    model = nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V2d"})
    plain = nest.encode(model, stimulus=images)
    monkeypatch.setattr(model_module, "_DEVICE_BOUND_WEIGHTS", {"cpu"})
    bound = nest.encode(model, stimulus=images)
    assert set(model._device_values) == {"cpu"}, "the weights are bound once and kept"
    for a, b in zip(bound, plain):
        np.testing.assert_array_equal(a, b)


def test_int8_backbone_is_opt_in_and_its_fidelity_recorded(nest, vit_bundle, tmp_path):
    manifest = json.loads((vit_bundle / "bundle.json").read_text())
    int8 = manifest["backbones"]["vit_b_32"]["precisions"]["int8"]
    recorded = int8["fidelity_vs_fp32"]["size_256"]
    assert set(recorded["per_head"]) == {"eeg-things_eeg_2-vit_b_32 subject 1", "eeg-things_eeg_2-vit_b_32 subject 2",
                                         "fmri-nsd_fsaverage-vit_b_32 subject 1"}
    images = synthetic.synthetic_images(8, 256, seed=256)  # the export's probe images at 256
    quantised = NEST(vit_bundle, precision="int8")
    got = quantised.encode(quantised.get_encoding_model(EEG, subject=1), stimulus=images)
    reference = nest.encode(nest.get_encoding_model(EEG, subject=1), stimulus=images)
    stats = compare(reference, got)
    assert stats["min_correlation"] == pytest.approx(
        recorded["per_head"]["eeg-things_eeg_2-vit_b_32 subject 1"]["min_correlation"], abs=1e-6)
    assert stats["min_correlation"] >= 0.99, stats  # random weights; trained ViTs: see bundle.json
    assert 0 < stats["relative_error"]  # it really is another computation
    with pytest.raises(ValueError, match="precision='bf16' is not valid"):
        NEST(vit_bundle, precision="bf16")


def test_fp16_backbone_is_cuda_only_with_fidelity_recorded(vit_bundle):
    fp16 = json.loads((vit_bundle / "bundle.json").read_text())["backbones"]["vit_b_32"]["precisions"]["fp16"]
    assert fp16["fidelity_vs_fp32"]["size_256"]["responses_min_correlation"] >= 0.999
    half = NEST(vit_bundle, precision="fp16")
    with pytest.raises(ValueError, match="precision='fp16' runs on the CUDA provider only"):
        half.get_encoding_model(EEG, subject=1, device="cpu")


def test_call_styles_of_both_apis(nest):
    images = synthetic.synthetic_images(2, 256, seed=12)
    by_keywords = nest.get_encoding_model(modality="eeg", train_dataset="things_eeg_2", model="vit_b_32",
                                          subject=1, device="cpu")
    positional_device = nest.get_encoding_model(EEG, "cpu", {"channels": ["Pz"]}, subject=1)
    full = nest.encode(model=by_keywords, stimulus=images)[0]
    np.testing.assert_array_equal(nest.encode(encoding_model=positional_device, images=images),
                                  full[:, :, [11]])
    assert nest.get_metadata("eeg", "things_eeg_2", "vit_b_32", 1)["eeg"]["ch_names"][11] == "Pz"
    with pytest.raises(TypeError, match="pass the model once"):
        nest.encode(by_keywords, model=by_keywords, images=images)
    with pytest.raises(ValueError, match="valid model ids"):
        nest.get_encoding_model("eeg-thing", "cpu", subject=1)


def test_rh_mask_with_lh_mask(nest):
    images = synthetic.synthetic_images(2, 256, seed=13)
    lh_mask, rh_mask = np.zeros(VERTICES, bool), np.zeros(VERTICES, bool)
    lh_mask[:3], rh_mask[-2:] = True, True
    lh, rh = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1, selection={
        "lh_vertices": lh_mask, "rh_vertices": rh_mask.astype(int).tolist()}), stimulus=images)
    full_lh, full_rh = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1), stimulus=images)
    np.testing.assert_array_equal(lh, full_lh[:, :3])
    np.testing.assert_array_equal(rh, full_rh[:, -2:])


def test_return_metadata_defaults_follow_the_api(nest):
    images = synthetic.synthetic_images(1, 256)
    legacy = nest.get_encoding_model("eeg", "things_eeg_2", "vit_b_32", 1)
    current = nest.get_encoding_model(EEG, subject=1)
    assert isinstance(nest.encode(legacy, images), tuple)
    assert isinstance(nest.encode(current, stimulus=images), np.ndarray)
    responses, metadata = nest.encode(current, stimulus=images, return_metadata=True)
    assert set(metadata) == {"eeg", "encoding_models"}


def test_catalog_queries(nest, capsys):
    assert nest.list_models() == ["fmri-nsd-fwrf", EEG, FSAVERAGE, "meg-things_meg_1-vit_b_32",
                                  "fmri-things_fmri_1-vit_b_32", "utah_array-tvsd-vit_b_32",
                                  "eeg-things_eeg_2-alexnet", "eeg-things_eeg_2-alexnet_untrained",
                                  "fmri-nsd_fsaverage-alexnet", "fmri-nsd_fsaverage-alexnet_untrained"]
    catalog = nest.get_model_catalog(print_format=True)
    assert catalog == {"fMRI": ["Natural Scenes Dataset (NSD) (fsaverage surface space)",
                                "Natural Scenes Dataset (NSD) (subject-native volume space)",
                                "THINGS fMRI1 (subject-native volume space)"],
                       "EEG": ["THINGS EEG2"], "MEG": ["THINGS MEG1"],
                       "utah_array": ["TVSD (THINGS Ventral Stream Spiking Dataset)"]}
    assert "THINGS EEG2" in capsys.readouterr().out
    card = nest.describe(EEG)
    assert set(card) == {"model_id", "model_info", "description", "input", "output", "parameters",
                         "parameters_by_function", "performance", "example_usage"}
    assert card["model_info"]["exported_subjects"] == [1, 2]
    metadata = nest.get_model_metadata(FSAVERAGE, subject=1)
    assert metadata["fmri"]["lh_fsaverage_rois"]["V1v"].dtype == np.int64


@pytest.mark.parametrize("call, kind, words", [
    (lambda n: n.get_encoding_model("eeg-things", subject=1), ValueError, ["eeg-things", "valid model ids"]),
    (lambda n: n.get_encoding_model(EEG), ValueError, ["subject is required"]),
    (lambda n: n.get_encoding_model(EEG, subject=11), ValueError, ["subject", "11"]),
    (lambda n: n.get_encoding_model(EEG, subject=3), ValueError, ["does not contain", "--subjects 3"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"rois": 1}), ValueError, ["'rois'", "channels"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"channels": ["Oz", "Q9"]}), ValueError,
     ["unknown values ['Q9']"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"channels": "Oz"}), TypeError, ["list"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"channels": []}), ValueError, ["empty"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"timepoints": [1] * 139}), ValueError,
     ["140 values"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"timepoints": [2] * 140}), ValueError,
     ["only 0 and 1"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"timepoints": [0] * 140}), ValueError,
     ["selects nothing"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection=["Oz"]), TypeError, ["selection must be a dict"]),
    (lambda n: n.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V9"}), ValueError, ["'V9'", "V1v"]),
    (lambda n: n.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": None}), TypeError, ["roi"]),
    (lambda n: n.get_encoding_model(FSAVERAGE, subject=1, selection={"rh_vertices": np.ones(10)}), ValueError,
     ["163842 values"]),
    (lambda n: n.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": "V1v", "lh_vertices": [1]}),
     ValueError, ["not both"]),
    (lambda n: n.get_encoding_model("fmri-nsd-fwrf", subject=1), ValueError, ["selection={'roi'"]),
    (lambda n: n.get_model_metadata(EEG), ValueError, ["subject is required"]),
    (lambda n: n.get_model_metadata(EEG, subject=1, roi="V1"), ValueError, ["roi applies to fmri-nsd-fwrf only"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"timepoints": [[1], [1, 0]]}), ValueError,
     ["flat list"]),
    (lambda n: n.get_encoding_model(EEG, subject=1, selection={"channels": [np.array(["Oz"])]}), TypeError,
     ["names (str)"]),
])
def test_selection_and_model_id_errors(nest, call, kind, words):
    assert_nest_error(lambda: call(nest), kind, words)


def test_empty_roi_is_an_error(nest, vit_toolkit):
    rois = toolkit.load_npy_dict(toolkit.head_files(vit_toolkit, "fmri-nsd_fsaverage-vit_b_32", 1)["metadata"])["fmri"]
    empty = [name for name in rois["lh_fsaverage_rois"]
             if len(rois["lh_fsaverage_rois"][name]) == 0 and len(rois["rh_fsaverage_rois"][name]) == 0]
    one_sided = [name for name in rois["lh_fsaverage_rois"] if len(rois["lh_fsaverage_rois"][name]) == 0
                 and len(rois["rh_fsaverage_rois"][name]) > 0]
    for name in empty:
        with pytest.raises(ValueError, match="no vertices"):
            nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": name})
    assert empty and one_sided
    for name in one_sided[:1]:
        lh, rh = nest.encode(nest.get_encoding_model(FSAVERAGE, subject=1, selection={"roi": name}),
                             stimulus=synthetic.synthetic_images(2, 256))
        assert lh.shape == (2, 0) and rh.shape[1] > 0


@pytest.fixture
def bundle_copy(vit_bundle, tmp_path):
    """A copy to damage; the large weight files (*.data) are hard-linked rather than copied
    (onnxruntime refuses external data reached through a symlink that leaves the model folder)."""
    def copy_or_link(source, target):
        if source.endswith(".data"):
            os.link(source, target)
        else:
            shutil.copy(source, target)
    return shutil.copytree(vit_bundle, tmp_path / "copy", copy_function=copy_or_link)


def test_bundle_without_backbone(bundle_copy):
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    del manifest["backbones"]
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no vit_b_32 backbone"):
        NEST(bundle_copy).get_encoding_model(EEG, subject=1)


def test_head_width_must_match_backbone(bundle_copy):
    """A head built for another feature width (here: a re-exported head of 1000 inputs)."""
    import onnx
    from nest_rt.bundle import sha256_file
    from nest_rt_export.head_graph import head_model
    folder = bundle_copy / "eeg-things_eeg_2-vit_b_32"
    onnx.save(head_model(1000, 12, 1, doc=""), folder / "sub-01.head.onnx")
    np.save(folder / "sub-01.pca_matrix.npy", np.zeros((1000, 12), np.float32))
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    for name in ("sub-01.head.onnx", "sub-01.pca_matrix.npy"):
        manifest["files"][f"eeg-things_eeg_2-vit_b_32/{name}"]["sha256"] = sha256_file(folder / name)
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="takes 1000 features .PCA matrix: 1000. but the bundle's backbone gives 460800"):
        NEST(bundle_copy).get_encoding_model(EEG, subject=1)


def test_regression_arrays_must_match_the_manifest(bundle_copy):
    from nest_rt.bundle import sha256_file
    coef = bundle_copy / "eeg-things_eeg_2-vit_b_32" / "sub-02.regression_coef.npy"
    np.save(coef, np.load(coef)[:, :, :100])
    manifest = json.loads((bundle_copy / "bundle.json").read_text())
    manifest["files"]["eeg-things_eeg_2-vit_b_32/sub-02.regression_coef.npy"]["sha256"] = sha256_file(coef)
    (bundle_copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"regression arrays have shapes \(1, 12, 100\)"):
        NEST(bundle_copy).get_encoding_model(EEG, subject=2)


def test_export_checks_head_shapes(tmp_path):
    nest_dir = synthetic_vit.write_vit_toolkit(tmp_path / "tk", eeg_subjects=[1], components=4, seed=2)
    path = toolkit.eeg_files(nest_dir, 1, "current")["metadata"]
    metadata = toolkit.load_npy_dict(path)
    metadata["eeg"]["ch_names"] = metadata["eeg"]["ch_names"][::-1]
    np.save(path, metadata, allow_pickle=True)
    with pytest.raises(ValueError, match="ch_names differ"):
        exporter.export_bundle(nest_dir, tmp_path / "b", vit_weights=nest_dir / synthetic_vit.VIT_WEIGHTS_NAME,
                               log=quiet)
    assert not (tmp_path / "b").exists()


def test_missing_backbone_file(bundle_copy):
    (bundle_copy / "vit_b_32" / "backbone.onnx").unlink()
    with pytest.raises(FileNotFoundError, match="backbone.onnx"):
        NEST(bundle_copy).get_encoding_model(FSAVERAGE, subject=1)


def test_every_graph_has_the_lowest_ir_version_its_opsets_need(vit_bundle):
    """onnx 1.23 stamps IR 14, which onnxruntime before 1.32 (and onnxruntime-node, the C#
    package) refuses; every graph of the bundle, the lower precisions included, says what it needs."""
    import onnx
    graphs = sorted(vit_bundle.rglob("*.onnx"))
    assert len(graphs) >= 6 and any("int8" in g.name for g in graphs) and any("fp16" in g.name for g in graphs)
    for path in graphs:
        model = onnx.load(path, load_external_data=False)
        assert model.ir_version == onnx.helper.find_min_ir_version_for(list(model.opset_import), True) <= 10, path
