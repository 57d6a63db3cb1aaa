"""The bundle variants for embedders: ``--portable`` (standard ONNX operators only, run here by two
other engines: OpenVINO and the ONNX reference evaluator) and ``--self-contained`` (one graph per
model and subject, images in, responses out).

References: torchvision's ViT-B/32 and upstream's scikit-learn heads (tests/berg_reference.py),
and the fwRF torch reference. Tolerances: parity.END_TO_END_TOLERANCE, the same as for
onnxruntime; a self-contained graph against the split graphs: self_contained.SPLIT_TOLERANCE.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from berg_reference import upstream_features, upstream_responses
from onnx import helper
from onnx.reference import ReferenceEvaluator

from nest_rt import NEST, cli
from nest_rt_export import exporter, synthetic, synthetic_vit
from nest_rt_export.errors import ExportError
from nest_rt_export.contract import IMAGES_INPUT, STANDARD_DOMAIN
from nest_rt_export.parity import END_TO_END_TOLERANCE, compare, within
from nest_rt_export.self_contained import SPLIT_TOLERANCE

from conftest import SUBJECT

EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"


def graph_domains(path) -> set[str]:
    return {node.domain or STANDARD_DOMAIN for node in onnx.load(str(path), load_external_data=False).graph.node}


def encode_flat(nest: NEST, model_id: str, images: np.ndarray) -> np.ndarray:
    """NEST.encode's output as the graphs give it: [N, R], fsaverage's lh then rh."""
    got = nest.encode(nest.get_encoding_model(model_id, subject=SUBJECT), images, return_metadata=False,
                      show_progress=False)
    parts = got if isinstance(got, tuple) else (got,)
    return np.concatenate([part.reshape(len(images), -1) for part in parts], axis=1)


def tolerance(family: str, native: bool) -> dict:
    return END_TO_END_TOLERANCE[family]["native" if native else "resized"]


# -- portable -------------------------------------------------------------------------------

def test_portable_bundle_has_standard_operators_only(variants_bundle, vit_bundle):
    graphs = sorted(variants_bundle.rglob("*.onnx"))
    assert {path.name for path in graphs} >= {"backbone.onnx", "backbone.int8.onnx", "sub-01.self_contained.onnx"}
    for path in graphs:
        assert graph_domains(path) == {STANDARD_DOMAIN}, path
    manifest = json.loads((variants_bundle / "bundle.json").read_text())
    assert manifest["portable"] is True
    contract = json.loads((variants_bundle / "vit_b_32" / "backbone.json").read_text())["contract"]
    assert contract["operator_domains"] == [STANDARD_DOMAIN]
    # the default export uses onnxruntime's fused kernels, and its contract says so
    assert "com.microsoft" in graph_domains(vit_bundle / "vit_b_32" / "backbone.onnx")
    default = json.loads((vit_bundle / "vit_b_32" / "backbone.json").read_text())["contract"]
    assert default["operator_domains"] == ["ai.onnx", "com.microsoft"]


def test_portable_export_refuses_a_graph_with_other_operators(tmp_path):
    graph = helper.make_graph([helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft")], "g",
                              [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [2]) for name in "xb"],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    (tmp_path / "head").mkdir()
    onnx.save(helper.make_model(graph), tmp_path / "head" / "fused.onnx")
    with pytest.raises(ExportError, match=r"--portable.*head/fused.onnx.*com.microsoft"):
        exporter._refuse_non_standard_operators(tmp_path)


@pytest.mark.parametrize("shape", [(256, 256), (300, 300), (256, 341)])
def test_openvino_runs_the_portable_vit_backbone(variants_bundle, variants_toolkit, shape):
    import openvino
    # 8 images, as the export's parity checks: with fewer, one pixel rounded the other way at a
    # resize tie (as onnxruntime's can be too) moves a feature's correlation across images visibly
    images = np.random.default_rng(sum(shape)).integers(0, 256, (8, 3, *shape), dtype=np.uint8)
    # f32 explicitly: on CPUs with AMX or AVX512-BF16, OpenVINO would otherwise compute in bfloat16
    compiled = openvino.Core().compile_model(str(variants_bundle / "vit_b_32" / "backbone.onnx"), "CPU",
                                             {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"images": images})[0]
    stats = compare(upstream_features(variants_toolkit / synthetic_vit.VIT_WEIGHTS_NAME, images), got)
    assert within(stats, tolerance("vit_b_32", shape == (256, 256))), stats


@pytest.mark.parametrize("size", [227, 300])
def test_onnx_reference_evaluator_runs_a_fwrf_graph(variants_bundle, variants_toolkit, reference, size):
    images = synthetic.synthetic_images(3, size, seed=size)
    evaluator = ReferenceEvaluator(str(variants_bundle / "fmri-nsd-fwrf" / "sub-01_roi-V1.onnx"))
    got = evaluator.run(None, {"images": images})[0]
    stats = compare(reference("V1", variants_toolkit)(images), got)
    assert within(stats, tolerance("fwrf", size == 227)), stats


def test_onnx_reference_evaluator_runs_a_four_block_head(variants_bundle, variants_toolkit):
    """The EEG head (four PCA blocks) on upstream's features, fed from the files its contract
    names, against upstream's scikit-learn maths on the same features."""
    features = upstream_features(variants_toolkit / synthetic_vit.VIT_WEIGHTS_NAME,
                                 synthetic.synthetic_images(3, 256, seed=8))
    contract = json.loads((variants_bundle / EEG / "sub-01.json").read_text())["contract"]
    assert contract["inputs"][0]["source"]["kind"] == "graph_output"
    feeds = {"features": features, **{i["name"]: np.load(variants_bundle / i["source"]["path"])
                                      for i in contract["inputs"][1:]}}
    assert feeds["coef"].shape[0] == 4
    got = ReferenceEvaluator(str(variants_bundle / contract["graph"])).run(None, feeds)[0]
    expected = upstream_responses(variants_toolkit, EEG, SUBJECT, features).reshape(3, -1)
    assert within(compare(expected, got), END_TO_END_TOLERANCE["vit_b_32"]["native"])


# -- self-contained -------------------------------------------------------------------------

@pytest.mark.parametrize("model_id", [EEG, FSAVERAGE])
def test_self_contained_graph_gives_what_encode_gives(variants_bundle, model_id):
    manifest = json.loads((variants_bundle / "bundle.json").read_text())
    record = manifest["models"][model_id]["graphs"]["1"]["all"]["self_contained"]
    contract = json.loads((variants_bundle / record["sidecar"]).read_text())["contract"]
    assert contract["inputs"] == [IMAGES_INPUT] and contract["role"] == "self_contained"
    assert (variants_bundle / record["data"]).stat().st_size == contract["memory"]["weights_bytes"]
    session = ort.InferenceSession(str(variants_bundle / record["graph"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    images = synthetic.synthetic_images(5, 240, seed=31)
    got = session.run(None, {"images": images})[0]
    assert got.shape == (5, contract["outputs"][0]["shape"][1])
    expected = encode_flat(NEST(variants_bundle), model_id, images)
    assert compare(expected, got)["relative_error"] <= SPLIT_TOLERANCE
    for size, parity in record["parity_vs_split"].items():
        assert parity["relative_error"] <= SPLIT_TOLERANCE, size


def test_self_contained_eeg_graph_matches_upstream(variants_bundle, variants_toolkit):
    images = synthetic.synthetic_images(3, 256, seed=12)
    graph = variants_bundle / EEG / "sub-01.self_contained.onnx"
    got = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]
    features = upstream_features(variants_toolkit / synthetic_vit.VIT_WEIGHTS_NAME, images)
    expected = upstream_responses(variants_toolkit, EEG, SUBJECT, features)
    assert expected.shape == (3, 4, 63, 140)
    assert within(compare(expected.reshape(3, -1), got), END_TO_END_TOLERANCE["vit_b_32"]["native"])


def test_verify_checks_the_self_contained_graphs(variants_bundle):
    from nest_rt.bundle_tools import verify_bundle
    lines = []
    verify_bundle(variants_bundle, device="cpu", log=lines.append)
    assert any("self-contained" in line and EEG in line for line in lines), lines
    assert any("self-contained" in line and FSAVERAGE in line for line in lines), lines


def test_export_command_passes_the_variant_flags(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(exporter, "export_bundle", lambda *args, **kwargs: calls.append(kwargs))
    argv = ["export", "--nest-dir", str(tmp_path), "--out", str(tmp_path / "bundle")]
    assert cli.main(argv + ["--portable", "--self-contained"]) == 0
    assert cli.main(argv) == 0
    assert [(c["portable"], c["self_contained"]) for c in calls] == [(True, True), (False, False)]
