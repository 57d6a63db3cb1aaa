"""Self-contained graphs (``nest-rt export --self-contained``): one graph per linear model,
subject and variant, uint8 images in, responses out, for embedders who want one file pair and no
``.npy`` inputs.

The graph is the backbone graph and the subject's head graph joined: the backbone's features feed
the head, and the head's weight inputs become initialisers, stored with the backbone's weights in
``<name>.onnx.data`` beside the graph. It computes every output (the split layout's selections,
which shrink the head, are not available), and each one repeats the backbone's weights (350 MB
for ViT-B/32, 233 MB for AlexNet). The split layout stays in the bundle: the Python runtime uses
it, and each self-contained graph is checked against it on the parity images.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nest_rt import catalog

from .contract import IMAGES_INPUT, contract_header, write_sidecar
from .errors import ExportError
from .onnx_graph import INPUT_NAME
from .parity import compare

# The joined graph runs the same operators on the same weights as the two split graphs; only
# onnxruntime's kernel choices (pre-packed constant weights, fused MatMul + Add) and so the
# summation order may differ. Measured on the test bundles: relative error 8e-7 to 1.8e-6.
SPLIT_TOLERANCE = 1e-5
_HEAD_PREFIX = "head/"


def self_contained_names(head_graph: str) -> dict[str, str]:
    """Where a head's self-contained graph, its weights and its sidecar go: beside the head,
    ``sub-01.head.onnx`` -> ``sub-01.self_contained.onnx`` (+ ``.onnx.data``, ``.json``)."""
    stem = head_graph.removesuffix(".head.onnx")
    return {"graph": f"{stem}.self_contained.onnx", "data": f"{stem}.self_contained.onnx.data",
            "sidecar": f"{stem}.self_contained.json"}


def joined_model(backbone_path: Path, head_path: Path, weights: dict[str, np.ndarray]):
    """The backbone graph (weights loaded) followed by the head graph, whose inputs named in
    ``weights`` become initialisers; the head's names get the prefix ``head/`` except its input
    ``features`` (the backbone's output) and its output ``responses``.

    Joined by hand rather than with onnx.compose.merge_models, which checks the joined model in
    memory and so refuses one over protobuf's 2 GB (an EEG head with four PCAs is 1.8 GB)."""
    import onnx
    from onnx import compose, numpy_helper

    from .backbone_graph import rename_value
    from .head_graph import FEATURES_NAME, RESPONSES_NAME
    model = onnx.load(str(backbone_path))
    head = compose.add_prefix(onnx.load(str(head_path)), _HEAD_PREFIX)
    graph = model.graph
    graph.node.extend(head.graph.node)
    graph.initializer.extend(head.graph.initializer)
    graph.initializer.extend(numpy_helper.from_array(np.ascontiguousarray(array), _HEAD_PREFIX + name)
                             for name, array in weights.items())
    rename_value(graph, _HEAD_PREFIX + FEATURES_NAME, FEATURES_NAME)
    rename_value(graph, _HEAD_PREFIX + RESPONSES_NAME, RESPONSES_NAME)
    del graph.output[:]
    graph.output.extend(head.graph.output)
    graph.output[0].name = RESPONSES_NAME
    versions = {entry.domain: entry.version for entry in list(model.opset_import) + list(head.opset_import)}
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in versions.items())
    return model


def export_self_contained(staging: Path, backbone_graph: str, head_names: dict[str, str], weight_files: dict[str, str],
                          split_responses: Callable[[np.ndarray], np.ndarray], probes: dict,
                          preprocessing: list[str], where: str) -> dict[str, Any]:
    """Write one head's self-contained graph and sidecar, check it against the split graphs on
    the parity probes (refused beyond SPLIT_TOLERANCE) and return its manifest record.
    ``weight_files`` maps the head's weight inputs to their .npy files (relative to ``staging``)."""
    import onnxruntime as ort

    from .head_graph import RESPONSES_NAME
    from .onnx_graph import save_with_external_data
    names = self_contained_names(head_names["head"])
    weights = {name: np.load(staging / path) for name, path in weight_files.items()}
    model = joined_model(staging / backbone_graph, staging / head_names["head"], weights)
    del weights
    save_with_external_data(model, staging / names["graph"])
    del model
    head_contract = json.loads((staging / head_names["sidecar"]).read_text(encoding="utf-8"))["contract"]
    contract = contract_header(
        role="self_contained", **{key: head_contract[key] for key in ("model_id", "subject", "variant", "backbone")},
        graph=names["graph"], inputs=[IMAGES_INPUT],
        outputs=[{**head_contract["outputs"][0], "name": RESPONSES_NAME}],
        preprocessing=preprocessing,
        selection="every output is computed; keep the columns you need (the split layout's head computes fewer)",
        recommended_batch=catalog.backbone(head_contract["backbone"]).images_per_call,
        memory={"weights_bytes": (staging / names["data"]).stat().st_size,
                "working_bytes_per_image": head_contract["memory"]["working_bytes_per_image"]})
    session = ort.InferenceSession(str(staging / names["graph"]), providers=["CPUExecutionProvider"])
    parity = {}
    for size, (_, onnx_features, images) in probes.items():
        record = compare(split_responses(onnx_features), session.run(None, {INPUT_NAME: images})[0])
        if not record["relative_error"] <= SPLIT_TOLERANCE:
            raise ExportError(f"{where}: the self-contained graph differs from the split graphs at size {size} "
                              f"by {record['relative_error']:.2e} of the response scale (tolerance {SPLIT_TOLERANCE})")
        parity[f"size_{size}"] = record
    sidecar = {"contract": contract, "split_graphs": {"backbone": backbone_graph, "head": head_names["head"]},
               "parity_vs_split": parity}
    write_sidecar(staging, names["graph"], names["sidecar"], sidecar,
                  f"nest_rt self-contained graph: {where}. uint8 images [N, 3, H, W] -> responses [N, R], "
                  f"backbone and head in one graph, weights in {Path(names['data']).name}.")
    return {**names, "parity_vs_split": parity, "tolerance": SPLIT_TOLERANCE}
