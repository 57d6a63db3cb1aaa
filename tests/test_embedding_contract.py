"""The bundle as an embedder sees it: every graph says what it is (doc_string, metadata_props) and
has a sidecar naming what feeds each input and what each output holds, labels included; all
files are readable by other accounts. A client that reads only the JSON sidecars, the .npy files
and the graphs (no nest_rt) reproduces NEST.encode, selections included.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from nest_rt import NEST
from nest_rt_export import exporter, synthetic

from conftest import quiet


def _graphs(bundle: Path) -> list[Path]:
    return sorted(bundle.rglob("*.onnx"))


def _sidecar_contract(bundle: Path, graph: Path) -> dict:
    props = {entry.key: entry.value for entry in onnx.load(str(graph), load_external_data=False).metadata_props}
    sidecar = json.loads((graph.parent / props["nest_rt.sidecar"]).read_text())
    return sidecar["contract"]


def test_every_graph_describes_itself(vit_bundle):
    graphs = _graphs(vit_bundle)
    assert len(graphs) >= 8  # fwRF x2, backbone fp32/int8/fp16, heads x3
    for graph in graphs:
        model = onnx.load(str(graph), load_external_data=False)
        props = {entry.key: entry.value for entry in model.metadata_props}
        contract = json.loads(props["nest_rt.contract"])
        assert len(model.doc_string) > 100 and "Contract" in model.doc_string, graph
        assert props["nest_rt.version"] and props["nest_rt.bundle_format"] == contract["bundle_format"]
        assert contract["graph"] == graph.relative_to(vit_bundle).as_posix()
        assert props["nest_rt.role"] == contract["role"] in ("fwrf", "backbone", "head")
        sidecar_contract = _sidecar_contract(vit_bundle, graph)
        # the graph and its sidecar say the same (a lower-precision backbone adds its precision)
        assert {k: v for k, v in contract.items() if k not in ("graph", "precision")} == \
            {k: v for k, v in sidecar_contract.items() if k not in ("graph", "precision")}


def test_every_input_is_fed_by_what_the_contract_names(vit_bundle):
    for graph in _graphs(vit_bundle):
        contract = _sidecar_contract(vit_bundle, graph)
        session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        declared = {item["name"]: item for item in contract["inputs"]}
        assert sorted(declared) == sorted(i.name for i in session.get_inputs()), graph
        for name, item in declared.items():
            source = item["source"]
            if source["kind"] == "npy_file":
                array = np.load(vit_bundle / source["path"], mmap_mode="r")
                assert list(array.shape) == item["shape"] and array.dtype == np.dtype(item["dtype"])
            elif source["kind"] == "graph_output":
                producer = ort.InferenceSession(str(vit_bundle / source["graph"]), providers=["CPUExecutionProvider"])
                assert source["output"] in [o.name for o in producer.get_outputs()]
            else:
                assert source["kind"] == "images" and item["dtype"] == "uint8"
        (output,) = contract["outputs"]
        assert output["name"] == session.get_outputs()[0].name
        if contract["role"] != "backbone":  # the arrays tile the output's columns
            widths = [a["columns"][1] - a["columns"][0] for a in output["arrays"]]
            assert sum(widths) == output["shape"][1]
            for array in output["arrays"]:
                assert int(np.prod(array["shape"][1:])) == array["columns"][1] - array["columns"][0]
                for axis in array["axes"]:
                    assert axis["labels"] is None or len(axis["labels"]) == axis["size"]
        assert contract["recommended_batch"] >= 1 and contract["memory"]["weights_bytes"] > 0


def test_labels_are_the_metadata_in_plain_json(vit_bundle):
    manifest = json.loads((vit_bundle / "bundle.json").read_text())
    entry = manifest["models"]["eeg-things_eeg_2-vit_b_32"]["graphs"]["1"]["all"]
    contract = json.loads((vit_bundle / entry["sidecar"]).read_text())["contract"]
    axes = {axis["name"]: axis for axis in contract["outputs"][0]["arrays"][0]["axes"]}
    metadata = NEST(vit_bundle).get_model_metadata("eeg-things_eeg_2-vit_b_32", subject=1)
    assert axes["channels"]["labels"] == list(metadata["eeg"]["ch_names"])
    np.testing.assert_array_equal(axes["times"]["labels"], metadata["eeg"]["times"])
    fwrf = manifest["models"]["fmri-nsd-fwrf"]["graphs"]["1"]["V1"]
    voxels = json.loads((vit_bundle / fwrf["sidecar"]).read_text())["contract"]["outputs"][0]["arrays"][0]["axes"][0]
    mask = NEST(vit_bundle).get_model_metadata("fmri-nsd-fwrf", subject=1, roi="V1")["fmri"]["roi_mask_volume"]
    assert voxels["labels"] == np.flatnonzero(mask).tolist()


def _build_machine_paths(toolkit: Path) -> set[str]:
    """Absolute paths of the machine that exports: this checkout, the exporter's and torch's
    install folders, the interpreter's prefix, the home folder and the toolkit read."""
    import sys
    import sysconfig

    import nest_rt_export
    import torch
    paths = {Path(__file__).resolve().parents[1], Path(nest_rt_export.__file__).parent,
             Path(nest_rt_export.__file__).resolve().parent, Path(torch.__file__).parent.parent,
             Path(sysconfig.get_paths()["purelib"]), Path(sys.prefix), Path.home(), toolkit}
    return {str(path) for path in paths if str(path) != "/"}


@pytest.mark.parametrize("bundle, toolkit", [("vit_bundle", "vit_toolkit"), ("variants_bundle", "variants_toolkit")])
def test_graphs_hold_no_path_of_the_build_machine(request, bundle, toolkit):
    """torch.onnx records a stack trace (source files with their absolute paths) in every node it
    exports; the exporter drops those records, so a bundle does not reveal where it was built.
    vit_bundle: backbone fp32/int8/fp16, heads, fwRF; variants_bundle: portable, self-contained."""
    bundle, toolkit = request.getfixturevalue(bundle), request.getfixturevalue(toolkit)
    forbidden = _build_machine_paths(toolkit)
    for graph in _graphs(bundle):
        content = graph.read_bytes()
        leaked = [path for path in forbidden if path.encode() in content]
        assert not leaked, (graph, leaked)


def test_files_are_readable_by_everyone_whatever_the_umask(toolkit_dir, tmp_path):
    previous = os.umask(0o077)
    try:
        bundle = exporter.export_bundle(toolkit_dir, tmp_path / "bundle", rois=["V1"], log=quiet)
    finally:
        os.umask(previous)
    for path in [bundle, *bundle.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o444 == 0o444 and (not path.is_dir() or mode & 0o111 == 0o111), (path, oct(mode))


# -- a client that knows only the contract ----------------------------------------------------
def contract_client(bundle: Path, model_id: str, subject: str, variant: str, images: np.ndarray,
                    keep_columns: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """What a program in another language does: bundle.json -> the graph's sidecar -> its inputs'
    sources, batches of the recommended size, arrays cut and reshaped as the contract says."""
    manifest = json.loads((bundle / "bundle.json").read_text())
    entry = manifest["models"][model_id]["graphs"][subject][variant]
    contract = json.loads((bundle / entry["sidecar"]).read_text())["contract"]

    def run(graph: str, feeds_for_batch, count: int, batch: int) -> np.ndarray:
        session = ort.InferenceSession(str(bundle / graph), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, feeds_for_batch(start, min(start + batch, count)))[0]
                               for start in range(0, count, batch)])

    feeds: dict[str, np.ndarray] = {}
    upstream = None
    for item in contract["inputs"]:
        source = item["source"]
        if source["kind"] == "npy_file":
            feeds[item["name"]] = np.load(bundle / source["path"])
        elif source["kind"] == "graph_output":
            upstream = (item["name"], source["graph"])
    if keep_columns is not None:  # the contract's selection rule: the same columns of every block
        feeds["coef"], feeds["intercept"] = feeds["coef"][:, :, keep_columns], feeds["intercept"][:, keep_columns]
    count = len(images)
    if upstream:
        name, graph = upstream
        backbone = json.loads((bundle / graph).with_name("backbone.json").read_text())["contract"]
        pixels = run(graph, lambda a, b: {"images": images[a:b]}, count, backbone["recommended_batch"])
        flat = run(contract["graph"], lambda a, b: {name: pixels[a:b], **feeds}, count, contract["recommended_batch"])
    else:
        flat = run(contract["graph"], lambda a, b: {"images": images[a:b]}, count, contract["recommended_batch"])
    if keep_columns is not None:
        return {"selected": flat}
    return {array["name"]: flat[:, array["columns"][0]:array["columns"][1]].reshape(count, *array["shape"][1:])
            for array in contract["outputs"][0]["arrays"]}


@pytest.mark.parametrize("model_id, subject, variant", [
    ("fmri-nsd-fwrf", "1", "lateral"), ("eeg-things_eeg_2-vit_b_32", "2", "all"),
    ("fmri-nsd_fsaverage-vit_b_32", "1", "all")])
def test_a_client_of_the_contract_alone_reproduces_encode(vit_bundle, model_id, subject, variant):
    images = synthetic.synthetic_images(5, 240, seed=21)
    got = contract_client(vit_bundle, model_id, subject, variant, images)
    nest = NEST(vit_bundle)
    selection = {"roi": variant} if model_id == "fmri-nsd-fwrf" else None
    expected = nest.encode(nest.get_encoding_model(model_id, subject=int(subject), selection=selection), images,
                           return_metadata=False, show_progress=False)
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert len(got) == len(expected)
    for array, want in zip(got.values(), expected):
        np.testing.assert_array_equal(array, want)  # the same onnxruntime build, the same batches


def test_a_client_selects_by_slicing_the_regression_columns(vit_bundle):
    images = synthetic.synthetic_images(3, 256, seed=22)
    channels = ["Oz", "O1"]
    contract = _sidecar_contract(vit_bundle, vit_bundle / "eeg-things_eeg_2-vit_b_32/sub-01.head.onnx")
    array = contract["outputs"][0]["arrays"][0]
    repetitions, channel_axis, times = array["axes"]
    blocks = next(i for i in contract["inputs"] if i["name"] == "coef")["shape"][0]
    wanted = [np.arange(repetitions["size"]), [channel_axis["labels"].index(c) for c in channels],
              np.arange(times["size"])]
    sizes = [axis["size"] for axis in array["axes"]]
    if blocks > 1:  # one PCA per repetition: the same columns of every block
        wanted, sizes = wanted[1:], sizes[1:]
    columns = array["columns"][0] + np.ravel_multi_index(np.meshgrid(*wanted, indexing="ij"), sizes).ravel()
    got = contract_client(vit_bundle, "eeg-things_eeg_2-vit_b_32", "1", "all", images, keep_columns=columns)
    nest = NEST(vit_bundle)
    expected = nest.encode(nest.get_encoding_model("eeg-things_eeg_2-vit_b_32", subject=1,
                                                   selection={"channels": channels}),
                           images, return_metadata=False, show_progress=False)
    np.testing.assert_array_equal(got["selected"].reshape(expected.shape), expected)


def test_backbone_graph_treats_non_square_images_as_upstream(vit_bundle, vit_toolkit):
    """Upstream's transform on non-square images (shorter side to 256, centre crop 224), which
    the graph does itself for embedders; the Python runtime keeps refusing them."""
    from berg_reference import vit_extractor, vit_features
    from nest_rt_export.parity import compare
    from nest_rt_export.synthetic_vit import VIT_WEIGHTS_NAME
    session = ort.InferenceSession(str(vit_bundle / "vit_b_32/backbone.onnx"), providers=["CPUExecutionProvider"])
    extractor = vit_extractor(vit_toolkit / VIT_WEIGHTS_NAME)
    for height, width in ((256, 341), (300, 225), (480, 640)):
        images = np.ascontiguousarray(synthetic.synthetic_images(4, max(height, width), seed=height)[:, :, :height, :width])
        stats = compare(vit_features(extractor, images), session.run(None, {"images": images})[0])
        # (256, 341): nothing resized, so as exact as at 256 x 256; otherwise the resize's rounding
        # (the ViT's end-to-end tolerance; the correlation per feature over 4 images is noisy there)
        exact = height == 256
        assert stats["relative_error"] <= (1e-5 if exact else 1e-3), (height, width, stats)
        assert stats["min_correlation"] >= (0.99999 if exact else 0.99), (height, width, stats)
    nest = NEST(vit_bundle)
    with pytest.raises(ValueError, match="square"):
        nest.encode(nest.get_encoding_model("eeg-things_eeg_2-vit_b_32", subject=1), images, show_progress=False)
