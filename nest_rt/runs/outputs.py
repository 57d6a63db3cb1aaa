"""Output planning: the files of each requested (model, subject, selection), their array shapes,
axis labels and metadata, with the requested models loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import catalog
from ..api import NEST
from ..bundle import nested_value
from ..errors import InvalidParameterError
from ..models import EncodingModel
from ..response_files import SINGLE_ARRAY, imageset_dir, metadata_file, npy_suffix, output_stem, responses_file
from .model_specs import ModelRequest, parse_model_spec


@dataclass
class Output:
    """The files of one (model, subject, selection)."""

    request: ModelRequest
    model: EncodingModel
    name: str
    folder: str
    stem: str
    shapes: dict[str, tuple]  # array name -> shape per image
    axes: dict[str, Any]
    metadata: dict[str, Any]

    def array_file(self, array: str) -> str:
        return f"{self.folder}/" + responses_file(self.stem, npy_suffix(array))

    @property
    def metadata_file(self) -> str:
        return f"{self.folder}/" + metadata_file(self.stem, ".npz")

    @property
    def h5_file(self) -> str:
        return f"{self.folder}/" + responses_file(self.stem, ".h5")


def planned_outputs(nest: NEST, model_specs: list[str], imageset: str, device: str) -> list[Output]:
    """The outputs of ``--model`` specs, their models loaded: what a run encodes, here or in each
    of its Ray workers (and what nest_rt.ray.Encoder gives as columns)."""
    requests = [request for spec in model_specs for request in parse_model_spec(spec, nest.bundle)]
    if not requests:
        raise InvalidParameterError("--model: give at least one model")
    return plan_outputs(nest, requests, imageset, device)


def plan_outputs(nest: NEST, requests: list[ModelRequest], imageset: str, device: str) -> list[Output]:
    outputs = []
    for request in requests:
        model = nest.get_encoding_model(request.model_id, subject=request.subject,
                                        selection=request.selection or None, device=device, **request.variant)
        stem = output_stem(request.subject, request.selection, request.variant)
        empty = model.allocate(0)
        shapes = ({plan.name: array.shape[1:] for plan, array in zip(model.plans, empty)} if isinstance(empty, tuple)
                  else {SINGLE_ARRAY: empty.shape[1:]})
        metadata = model.metadata()
        axes, chosen = _axes(request, model, shapes, metadata)
        name = f"{request.model_id}_{stem}"
        if any(output.name == name for output in outputs):
            raise InvalidParameterError(f"--model: {name} is asked for twice")
        outputs.append(Output(request, model, name, imageset_dir(request.model_id, imageset),
                              stem, shapes, axes, {**metadata, "selection": chosen}))
    return outputs


def _axes(request: ModelRequest, model: EncodingModel, shapes: dict, metadata: dict) -> tuple[dict, dict]:
    """Labels of the output axes for the run record (an axis the manifest gives labels for, such
    as EEG channels or times, lists the kept labels; others their count), and the selected
    indices (as the model chose them when it was loaded) for the metadata."""
    if not catalog.is_linear(request.model_id):
        return {"voxels": int(shapes["responses"][0])}, {"roi": np.array(request.selection["roi"])}
    described = {}
    for plan in model.plans:
        axes: dict[str, Any] = {}
        if getattr(model, "axis_name", None):
            axes[model.axis_name] = len(model.parts)
        if plan.block_axis:
            axes[plan.block_axis] = len(plan.blocks)
        for axis in plan.axes:
            kept = plan.indices[axis["name"]]
            labels = _labels(metadata, axis.get("labels"))
            axes[axis["name"]] = (np.asarray(labels)[kept].tolist() if labels is not None else len(kept))
        described[plan.name] = axes
    if len(model.plans) == 1:
        return described[model.plans[0].name], model.plans[0].indices
    return described, model.selected_indices


def _labels(metadata: dict, path: str | None):
    values = nested_value(metadata, path)
    if values is None:
        return None
    values = np.asarray(values)
    return values.round(6) if values.dtype.kind == "f" else values.astype(str)
