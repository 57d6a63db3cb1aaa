"""The embedding contract: what each graph of a bundle takes and gives, written where a program
in any language finds it without Python.

Every graph has a JSON sidecar whose ``contract`` lists, for each graph input, what feeds it
(the images, a ``.npy`` file of the bundle, or another graph's output) and, for each output, its
shape and the named arrays it holds, with their axes and the axes' labels in plain JSON (EEG
channel names and times, MEG sensors, fwRF voxel positions...). The same contract is stamped
into the ``.onnx`` itself (``doc_string`` and ``metadata_props``), so that a graph copied out of
its bundle still says what it is. ``describe_graph`` writes both from one dict.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from nest_rt import __version__, catalog
from nest_rt.bundle import BUNDLE_FORMAT, nested_value

CONTRACT_VERSION = 1
STANDARD_DOMAIN = "ai.onnx"
# The images every graph that starts from pixels takes (the runtime checks the same).
IMAGES_INPUT = {"name": "images", "dtype": "uint8", "shape": ["N", 3, "H", "W"], "source": {"kind": "images"},
                "values": "RGB integers 0..255, channels first. The Python runtime takes square images only "
                          "(H = W); the graphs take any H, W and treat them as upstream does (see preprocessing)"}
# Keys copied from a contract into the graph's metadata_props as plain strings, for tools that
# list them (Netron, onnx.load(...).metadata_props) without parsing the JSON.
_SUMMARY_KEYS = ("model_id", "subject", "variant", "roi", "backbone", "role")


def file_input(name: str, dtype: str, shape: list, path: str) -> dict[str, Any]:
    """A graph input fed from a ``.npy`` file of the bundle (``path`` relative to the bundle)."""
    return {"name": name, "dtype": dtype, "shape": shape, "source": {"kind": "npy_file", "path": path}}


def graph_output_input(name: str, dtype: str, shape: list, graph: str, output: str) -> dict[str, Any]:
    """A graph input fed by another graph's output (a head's features: the backbone's)."""
    return {"name": name, "dtype": dtype, "shape": shape,
            "source": {"kind": "graph_output", "graph": graph, "output": output}}


def output_arrays(model_id: str, metadata: dict, pca_blocks: int) -> list[dict[str, Any]]:
    """How a head's output [N, R] splits into the model's named arrays, each with its axes and
    their labels (None where an axis is plain positions: fsaverage vertices, voxel columns).

    One PCA: the arrays take consecutive column ranges in this order, each reshaped to
    [N, (blocks,) *axes]. One PCA per block: the single array is [N, blocks, *axes]."""
    arrays, start = [], 0
    for output in catalog.model_entry(model_id).outputs:
        axes = [{"name": axis.name, "size": axis.size, "labels": _labels(metadata, axis.labels)}
                for axis in output.axes]
        blocks = len(output.blocks)
        width = blocks * int(np.prod([axis["size"] for axis in axes]))
        shape = ["N", *([blocks] if output.block_axis else []), *[axis["size"] for axis in axes]]
        block_axis = [{"name": output.block_axis, "size": blocks, "labels": None}] if output.block_axis else []
        arrays.append({"name": output.name, "columns": [start, start + width], "shape": shape,
                       "axes": block_axis + axes})
        start += width
    if pca_blocks > 1 and len(arrays) != 1:
        raise ValueError(f"{model_id}: one PCA per block needs a single output array")
    return arrays


def _labels(metadata: dict, path: str | None) -> list | None:
    value = nested_value(metadata, path)
    return None if value is None else np.asarray(value).tolist()


def write_sidecar(bundle_root: Path, graph: str, sidecar_name: str, sidecar: dict[str, Any], doc: str) -> None:
    """Stamp the contract of a graph's sidecar and ``doc`` into the graph, then write the
    sidecar (which holds the ``contract``), so the two say the same."""
    describe_graph(bundle_root, graph, sidecar_name, sidecar["contract"], doc)
    (bundle_root / sidecar_name).write_text(json.dumps(sidecar, indent=1, default=str), encoding="utf-8")


def operator_domains(model) -> list[str]:
    """The operator domains a graph's nodes use: ``ai.onnx`` (standard ONNX) and any other, such
    as onnxruntime's ``com.microsoft``, which other engines do not implement."""
    return sorted({node.domain or STANDARD_DOMAIN for node in model.graph.node})


def describe_graph(bundle_root: Path, graph: str, sidecar: str, contract: dict[str, Any], doc: str) -> None:
    """Stamp ``contract`` and ``doc`` into the graph ``graph`` (relative to ``bundle_root``): its
    doc_string (``doc`` and where the contract is) and metadata_props (earlier props are kept).
    The graph's operator domains are added to ``contract`` first (``operator_domains``); its
    nodes' build records are dropped (``strip_build_records``). Weights stored beside the graph stay where they are: only the
    graph file is rewritten."""
    import onnx
    from onnx import helper

    from .onnx_graph import stamp_minimum_ir_version, strip_build_records
    path = bundle_root / graph
    model = onnx.load(str(path), load_external_data=False)
    contract["operator_domains"] = operator_domains(model)
    props = {entry.key: entry.value for entry in model.metadata_props}
    props.update({"nest_rt.version": __version__, "nest_rt.bundle_format": BUNDLE_FORMAT,
                  "nest_rt.contract_version": str(CONTRACT_VERSION),
                  "nest_rt.sidecar": Path(sidecar).name, "nest_rt.contract": json.dumps(contract)})
    props.update({f"nest_rt.{key}": str(contract[key]) for key in _SUMMARY_KEYS if key in contract})
    helper.set_model_props(model, props)
    model.doc_string = f"{doc} Contract: metadata_props nest_rt.contract, or {Path(sidecar).name} beside it."
    # the last write of every graph: loadable by older onnxruntime, and no path of this machine inside
    stamp_minimum_ir_version(model)
    strip_build_records(model)
    onnx.save(model, str(path))


def contract_header(**fields: Any) -> dict[str, Any]:
    """The fields every contract starts with, then the caller's (model_id, subject, ...)."""
    return {"contract_version": CONTRACT_VERSION, "nest_rt": __version__, "bundle_format": BUNDLE_FORMAT,
            **fields}
