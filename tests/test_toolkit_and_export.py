"""Synthetic toolkit formats, safe toolkit readers, and what the exporter writes."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from nest_rt import catalog
from nest_rt.bundle import sha256_file
from nest_rt_export import exporter, synthetic, toolkit
from nest_rt_export.parity import END_TO_END_TOLERANCE, network_problems, resize_problems, within
from nest_rt_export.fwrf_torch import FwrfEncoder, FwrfReadout

from conftest import SUBJECT, VOXELS, quiet


def test_checkpoint_has_upstream_keys_and_loads_strictly(toolkit_dir):
    path = toolkit.fwrf_files(toolkit_dir, SUBJECT, "V1")["weights"][0]
    checkpoint = toolkit.load_checkpoint(path)
    assert set(checkpoint) == {"args.", "best_params", "final_params", "trn_hist", "hold_hist",
                               "hold_cc_hist", "best_epoch", "best_joint_cc_score", "subject_val_cc",
                               "stim_mean", "betas_info"}
    assert isinstance(checkpoint["args."], argparse.Namespace)
    assert checkpoint["args."].roi == "V1" and checkpoint["args."].used_nsd_sub == SUBJECT
    assert checkpoint["stim_mean"].shape == (1, 3, 1, 1) and checkpoint["stim_mean"].dtype == np.float32
    encoder = checkpoint["best_params"]["enc"]
    assert len(encoder) == 54 and encoder["enc.bn1.num_batches_tracked"].dtype == torch.int64
    assert sum(v.numel() for v in encoder.values()) == 1_367_562  # the gnet Encoder's parameter count upstream
    FwrfEncoder().load_state_dict(encoder, strict=True)
    readout = checkpoint["best_params"]["fwrfs"][SUBJECT]
    assert {k: tuple(v.shape) for k, v in readout.items()} == {
        "rf0": (VOXELS, 27, 27), "rf1": (VOXELS, 25, 25), "rf2": (VOXELS, 13, 13),
        "w": (VOXELS, 768), "b": (VOXELS,)}
    FwrfReadout(VOXELS).load_state_dict(readout, strict=True)
    assert set(checkpoint["betas_info"][SUBJECT]) == {
        "volume_shape", "roi_mask_volume", "fmri_affine", "ncsnr", "masterordering", "subjectim",
        "img_presentation_order", "train_img_num", "train_img_idx", "val_img_num", "val_img_idx",
        "test_img_num", "test_img_idx"}


def test_split_rois_cut_at_ceil_half(tmp_path):
    nest_dir = synthetic.write_toolkit(tmp_path, subjects=[2], rois=["lateral"], voxels=7)
    files = toolkit.fwrf_files(nest_dir, 2, "lateral")
    assert [p.name for p in files["weights"]] == ["weights_sub-02_roi-lateral_split-1.pt",
                                                  "weights_sub-02_roi-lateral_split-2.pt"]
    sizes = [len(toolkit.load_checkpoint(p)["best_params"]["fwrfs"][2]["b"]) for p in files["weights"]]
    assert sizes == [4, 3]
    metadata = toolkit.load_npy_dict(files["metadata"])
    assert metadata["fmri"]["roi_mask_volume"].shape == synthetic.VOLUME_SHAPE
    assert metadata["fmri"]["roi_mask_volume"].sum() == 7 == len(metadata["encoding_models"]["r2"])


def test_default_voxel_counts_are_subject_1s():
    counts = synthetic.voxel_counts(None)
    assert counts["V1"] == 1350 and counts["lateral"] == 7799 and counts["ventral"] == 7604
    assert list(counts) == catalog.rois("fmri-nsd-fwrf")


def test_metadata_npy_is_a_pickled_dict_like_upstream(toolkit_dir):
    path = toolkit.fwrf_files(toolkit_dir, SUBJECT, "EBA")["metadata"]
    upstream_style = np.load(path, allow_pickle=True).item()  # how upstream reads it
    ours = toolkit.load_npy_dict(path)
    assert set(ours) == set(upstream_style) == {"fmri", "encoding_models"}
    np.testing.assert_array_equal(ours["fmri"]["ncsnr"], upstream_style["fmri"]["ncsnr"])


class _Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_npy_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array({"fmri": _Exploit()}, dtype=object), allow_pickle=True)
    with pytest.raises(toolkit.ToolkitError, match="refusing to unpickle builtins.print"):
        toolkit.load_npy_dict(path)


def test_checkpoint_reader_refuses_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"args.": _Exploit()}, path)
    with pytest.raises(toolkit.ToolkitError, match="evil.pt: refusing to unpickle print"):
        toolkit.load_checkpoint(path)


def test_damaged_toolkit_files_are_named(toolkit_dir, tmp_path):
    source = toolkit.fwrf_files(toolkit_dir, SUBJECT, "V1")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(source["weights"][0].read_bytes()[:5000])
    with pytest.raises(toolkit.ToolkitError, match="cut.pt"):
        toolkit.load_checkpoint(truncated)
    not_a_dict = tmp_path / "array.npy"
    np.save(not_a_dict, np.arange(3))
    with pytest.raises(toolkit.ToolkitError, match="array.npy.*0-d object array"):
        toolkit.load_npy_dict(not_a_dict)


def test_bundle_manifest_records_everything(bundle_dir, toolkit_dir):
    manifest = json.loads((bundle_dir / "bundle.json").read_text())
    assert manifest["format"] == "nest_rt.bundle/3" and manifest["opset"] == 18
    assert {"nest_rt", "torch", "onnx", "onnxruntime", "numpy", "python"} <= set(manifest["tools"])
    graphs = manifest["models"]["fmri-nsd-fwrf"]["graphs"]["1"]
    assert list(graphs) == catalog.rois("fmri-nsd-fwrf")
    on_disk = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert on_disk - {"bundle.json"} == set(manifest["files"])
    assert len(manifest["files"]) == 3 * 23
    for relative, record in manifest["files"].items():
        assert sha256_file(bundle_dir / relative) == record["sha256"]
    assert len(manifest["sources"]) == 21 + 2 * 2 + 23
    for relative, record in manifest["sources"].items():
        assert sha256_file(toolkit_dir / relative) == record["sha256"]
    for roi, entry in graphs.items():
        for size, kind in (("size_227", "native"), ("size_256", "resized")):
            record = entry["parity"][size]
            assert network_problems(record) == [] and record["network"]["error_vs_float64"] > 0  # measured
            assert within(record, END_TO_END_TOLERANCE["fwrf"][kind])
        resize = entry["resize_parity"]
        assert all(resize_problems(stats) == [] for stats in resize.values())
        assert 0 < resize["size_256"]["differing_fraction"] < 0.005 and resize["size_256"]["max_grey_levels"] == 1
        sidecar = json.loads((bundle_dir / entry["sidecar"]).read_text())
        assert sidecar["voxels"] == entry["voxels"] == VOXELS
        assert sidecar["input"] == {"name": "images", "dtype": "uint8", "shape": ["N", 3, "S", "S"],
                                    "values": sidecar["input"]["values"]}
        assert sidecar["splits"] == ([13, 12] if roi in ("lateral", "ventral") else [25])
        assert sidecar["provenance"]["training_args"][0]["roi"] == roi


def test_graph_contract_and_folded_constants(bundle_dir):
    import onnx
    model = onnx.load(bundle_dir / "fmri-nsd-fwrf" / "sub-01_roi-lateral.onnx")
    (graph_input,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "images" and dims == ["N", 3, "S", "S"]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    ops = {node.op_type for node in model.graph.node}
    assert "Softmax" not in ops, "receptive-field softmax must be folded at export"
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in resize.attribute}
    assert attributes["antialias"] == 1 and attributes["exclude_outside"] == 1
    assert sum(1 for n in model.graph.node if n.op_type == "Conv") == 2 * 9


def test_interrupted_export_leaves_nothing(toolkit_dir, tmp_path, monkeypatch):
    calls = []

    def fail_on_third(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)
    original = exporter.export_fwrf
    monkeypatch.setattr(exporter, "export_fwrf", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V1", "V2", "V3"], log=quiet)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_never_replaces_the_toolkit_or_other_folders(toolkit_dir, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a bundle"):
        exporter.export_bundle(toolkit_dir, tmp_path / "notes", overwrite=True, log=quiet)
    for out in (toolkit_dir, toolkit_dir.parent, toolkit_dir / "inside"):
        with pytest.raises(ValueError, match="outside --nest-dir"):
            exporter.export_bundle(toolkit_dir, out, overwrite=True, log=quiet)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert toolkit.available_fwrf(toolkit_dir)[SUBJECT] == catalog.rois("fmri-nsd-fwrf")


def test_leftovers_of_a_killed_export_are_removed(toolkit_dir, tmp_path):
    stale = tmp_path / ".bundle.partial-999999999"  # no such process
    stale.mkdir()
    exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V1"], log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_subjects_alone_exports_every_roi_found(toolkit_dir, tmp_path):
    bundle = exporter.export_bundle(toolkit_dir, tmp_path / "b", subjects=[SUBJECT], log=quiet)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert list(manifest["models"]["fmri-nsd-fwrf"]["graphs"]["1"]) == catalog.rois("fmri-nsd-fwrf")


def test_existing_output_needs_overwrite(toolkit_dir, tmp_path):
    exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V2"], log=quiet)
    with pytest.raises(ValueError, match="already exists.*--overwrite"):
        exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V1"], log=quiet)
    exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V1"], overwrite=True, log=quiet)
    assert (tmp_path / "bundle" / "bundle.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_export_refuses_missing_files_and_bad_requests(toolkit_dir, tmp_path):
    with pytest.raises(ValueError, match="toolkit files missing.*weights_sub-02_roi-V1.pt"):
        exporter.export_bundle(toolkit_dir, tmp_path / "b", subjects=[2], rois=["V1"], log=quiet)
    with pytest.raises(ValueError, match="not a directory"):
        exporter.export_bundle(tmp_path / "nope", tmp_path / "b", log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no NEST models"):
        exporter.export_bundle(tmp_path / "empty", tmp_path / "b", log=quiet)
    with pytest.raises(ValueError, match="holds no files for"):
        exporter.export_bundle(toolkit_dir, tmp_path / "b", models=["eeg-things_eeg_2-vit_b_32"], log=quiet)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_export_refuses_a_graph_that_disagrees_with_torch(toolkit_dir, tmp_path, monkeypatch):
    from nest_rt_export import fwrf_onnx
    real_resize = fwrf_onnx.resized_pixels

    def brighter(g, size_hw, portable=False):  # a preprocessing bug: every pixel 13 grey levels too bright
        return g.op("Add", [real_resize(g, size_hw, portable), g.const("offset", np.float32(13.0))])
    monkeypatch.setattr(fwrf_onnx, "resized_pixels", brighter)
    with pytest.raises(ValueError, match="refused at image size 227: on identical pixels its error"):
        exporter.export_bundle(toolkit_dir, tmp_path / "b", rois=["V1"], log=quiet)
    assert list(tmp_path.iterdir()) == []
