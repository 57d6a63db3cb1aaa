"""Export of the linear models (a backbone, then scaler -> PCA -> regression) into a bundle: those
on the ViT-B/32 backbone (EEG, MEG, fsaverage and THINGS fMRI, Utah array) and those on the
trained and untrained AlexNet (EEG, fsaverage).

One graph per backbone serves every subject of every model on it; each subject (and variant) gets a
folded head, its regression weights as .npy, its metadata as .npz and a sidecar. What differs
between models (files, keys, output axes) comes from models_manifest.json. Parity against the
torch + scikit-learn reference (each backbone's file in backbones/, head_reference.py) is checked as parity.py
describes: the backbone's resize against torchvision's, the backbone on identical pixels and each
head on identical features against float64, and end to end (recorded); a graph outside the
tolerances is refused. Every graph gets its contract (contract.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from nest_rt import catalog
from nest_rt.bundle import nested_value
from nest_rt.models import HEAD_BATCH

from . import backbones, toolkit
from .artifacts import record_graph, record_sources, save_flat_npz
from .backbones import Backbone
from .checks import check_resize, refuse_network
from .contract import (IMAGES_INPUT, contract_header, describe_graph, file_input, graph_output_input,
                       output_arrays, write_sidecar)
from .errors import ExportError
from .head_graph import (COEF_NAME, FEATURES_NAME, INTERCEPT_NAME, PCA_BIAS_NAME, PCA_MATRIX_NAME, RESPONSES_NAME,
                         folded_pca, head_model)
from .onnx_graph import INPUT_NAME, OPSET, save_with_external_data
from .parity import compare, network_stats

PARITY_SIZES = (256, 300)  # the transform's native size (no resize) and one resized size
PARITY_IMAGES = 8


def linear_models() -> list[str]:
    """Every linear model (a backbone and a head): the ViT-B/32 and the AlexNet ones."""
    return [model_id for model_id in catalog.models() if catalog.is_linear(model_id)]


def backbone_of(model_id: str) -> str:
    return catalog.model_entry(model_id).backbone


def backbone_features(name: str) -> int:
    return catalog.backbone(name).features


def linear_jobs(nest_dir: Path, models: list[str], subjects: list | None,
                strict: bool) -> dict[str, list[tuple[Any, str]]]:
    """(subject, variant) pairs to export per model: the requested subjects or all found, with
    every variant found. With ``strict`` (the model was named with --models) a requested subject
    without files is an error, else skipped."""
    jobs = {}
    for model_id in models:
        found = toolkit.available_heads(nest_dir, model_id)
        if subjects is None:
            chosen = list(found)
        else:
            valid = [s for s in subjects if s in catalog.subjects(model_id)]
            missing = [s for s in valid if s not in found]
            if missing and strict:
                raise ExportError(f"{model_id}: toolkit files missing for subjects {missing} (expected "
                                  f"{toolkit.head_files(nest_dir, model_id, missing[0], catalog.variants(model_id)[0])})")
            chosen = [s for s in valid if s in found]
        if chosen:
            jobs[model_id] = [(subject, variant) for subject in chosen for variant in found[subject]]
    return jobs


class SourceBackbone(NamedTuple):
    """A registered backbone with its network built from the weights the export was given, the
    torch reference over that network, and the weights' provenance."""
    backbone: Backbone
    network: Any
    reference: Any
    provenance: dict[str, Any]

    @classmethod
    def build(cls, name: str, weights: dict[str, Any]) -> "SourceBackbone":
        backbone = backbones.get(name)
        network = backbone.network(weights.get(name))
        return cls(backbone, network, backbone.reference(network), backbone.provenance(weights.get(name), network))


class WrittenHead(NamedTuple):
    """A head written to the bundle: its label, its file names (models_manifest.json's
    bundle_files), and features -> responses through the written graph and weights."""
    label: str
    names: dict[str, str]
    weight_files: dict[str, str]  # the head graph's weight inputs -> their .npy files
    responses: Callable[[np.ndarray], np.ndarray]


def export_linear(nest_dir: Path, staging: Path, manifest: dict, jobs: dict[str, list[tuple[Any, str]]],
                  weights: dict[str, Any], log: Callable[[str], None], precisions: tuple[str, ...] = (),
                  portable: bool = False, self_contained: bool = False) -> None:
    """Every backbone the jobs' models need, each followed by its models' heads. ``weights``
    maps a backbone to a torchvision state dict path (None: torchvision's own weights);
    ``portable`` exports the backbones in standard ONNX operators only; ``self_contained`` adds
    one graph per head joining backbone and head (self_contained.py)."""
    for name in dict.fromkeys(backbone_of(model_id) for model_id in jobs):
        _export_backbone(nest_dir, staging, manifest, name, SourceBackbone.build(name, weights), log, precisions,
                         {model_id: pairs for model_id, pairs in jobs.items() if backbone_of(model_id) == name},
                         self_contained, portable)


def _export_backbone(nest_dir, staging, manifest, name, source: SourceBackbone, log, precisions, jobs,
                     self_contained: bool, portable: bool) -> None:
    from .self_contained import export_self_contained
    backbone = source.backbone
    title = backbone.title
    log(f"exporting the {title} backbone (shared by every subject of every model on it)")
    backbone_entry = catalog.backbone(name)
    graph_path = staging / backbone_entry.graph
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    written = save_with_external_data(backbone.graph(source.network, portable=portable), graph_path)
    resize_parity = check_resize(graph_path, backbone.preprocessing.resize, f"the {title} backbone graph")
    probes, parity = _backbone_parity(source.reference, backbone.transform(), graph_path, title)
    manifest.setdefault("backbones", {})[name] = {
        "graph": backbone_entry.graph, "data": written[1].relative_to(staging).as_posix(),
        "features": backbone_entry.features,
        "weights": source.provenance,
        "parity": parity,
        "resize_parity": resize_parity,
    }
    heads = []
    for model_id, pairs in jobs.items():
        for subject, variant in pairs:
            log(f"exporting {model_id} subject {subject}" + ("" if variant == "all" else f" {variant}"))
            head = _export_head(nest_dir, staging, manifest, model_id, subject, variant, probes)
            heads.append(head)
            if self_contained:
                log(f"joining the {title} backbone and that head into one self-contained graph")
                record = export_self_contained(staging, backbone_entry.graph, head.names, head.weight_files,
                                               head.responses, probes, backbone.preprocessing.steps(), head.label)
                manifest["models"][model_id]["graphs"][str(subject)][variant]["self_contained"] = record
    for precision in precisions:
        log(f"writing the {precision} {title} backbone (opt-in) and measuring its fidelity against fp32")
        manifest["backbones"][name].setdefault("precisions", {})[precision] = _export_precision(
            staging, graph_path, probes, heads, precision)
    _describe_backbone(staging, manifest["backbones"][name], backbone)


def _describe_backbone(staging: Path, entry: dict, backbone: Backbone) -> None:
    """The backbone's sidecar (what it takes and gives, where its weights came from, its parity)
    and the same contract stamped into each of its graphs (fp32 and any lower precision)."""
    name, title = backbone.name, backbone.title
    features = int(entry["features"])
    sidecar_name = f"{Path(entry['graph']).parent.as_posix()}/backbone.json"
    graphs = {"fp32": entry["graph"], **{p: v["graph"] for p, v in entry.get("precisions", {}).items()}}
    weight_files = [entry.get("data")] + [v.get("data") for v in entry.get("precisions", {}).values()]
    contract = contract_header(
        role="backbone", backbone=name, graph=entry["graph"], inputs=[IMAGES_INPUT],
        outputs=[{"name": FEATURES_NAME, "dtype": "float32", "shape": ["N", features],
                  "layout": "each node's output flattened in C order, the nodes concatenated in this order",
                  "nodes": backbone.layout()}],
        preprocessing=backbone.preprocessing.steps(),
        recommended_batch=catalog.backbone(name).images_per_call,
        memory={"weights_bytes": sum((staging / f).stat().st_size for f in weight_files if f),
                "output_bytes_per_image": 4 * features},
        precisions=graphs)
    sidecar = {"contract": contract, "title": title, "weights": entry["weights"], "parity": entry["parity"],
               "resize_parity": entry["resize_parity"]}
    entry["sidecar"] = sidecar_name
    for precision, graph in graphs.items():
        doc = (f"nest_rt {title} backbone ({precision}): uint8 images [N, 3, S, S] -> features float32 "
               f"[N, {features}], shared by every model on it; its heads take these features.")
        if precision == "fp32":
            write_sidecar(staging, graph, sidecar_name, sidecar, doc)
        else:
            describe_graph(staging, graph, sidecar_name, {**contract, "graph": graph, "precision": precision}, doc)


def _backbone_parity(reference, transform, graph_path: Path, title: str) -> tuple[dict, dict]:
    """Network and end-to-end parity of the backbone graph against its torch ``reference`` after
    upstream's ``transform`` (see parity.py); refuses it outside the tolerance. Returns the probes
    the heads are checked on, per size: (torch features, onnxruntime features, images), and the
    parity record."""
    from .onnx_graph import RESIZED_PIXELS, probe_session
    from .synthetic import synthetic_images
    from .torch_reference import float64_copy, float64_features, reference_features
    in_float64 = float64_copy(reference)
    session = probe_session(graph_path, [RESIZED_PIXELS])
    probes, parity = {}, {}
    for size in PARITY_SIZES:
        images = synthetic_images(PARITY_IMAGES, size, seed=size)
        onnx_features, pixels = session.run(None, {INPUT_NAME: images})
        same_pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)  # at 256: no resize upstream
        on_same_pixels = reference_features(reference, same_pixels, transform)
        # where the pixels are the images (the native size), the end-to-end reference is the same run
        same = np.array_equal(same_pixels, images)
        torch_features = on_same_pixels if same else reference_features(reference, images, transform)
        record = {**compare(torch_features, onnx_features),
                  "network": network_stats(float64_features(in_float64, same_pixels, transform), on_same_pixels,
                                           onnx_features)}
        refuse_network(record, f"the {title} backbone graph", size)
        probes[size], parity[f"size_{size}"] = (torch_features, onnx_features, images), record
    return probes, parity


def _export_precision(staging: Path, graph_path: Path, probes: dict, heads: list,
                      precision: str) -> dict[str, Any]:
    """Write a lower-precision backbone and record its fidelity against the fp32 backbone: per
    exported head, responses from its features vs from fp32 features on the parity images.
    fp16 is measured on the CPU provider with graph optimisations off (the CUDA provider, where
    it is meant to run, is not needed for the measurement)."""
    import onnxruntime as ort
    from .precisions import PRECISION_WRITERS
    path = graph_path.with_name(f"backbone.{precision}.onnx")
    PRECISION_WRITERS[precision](graph_path, path)
    options = ort.SessionOptions()
    if precision == "fp16":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fidelity = {}
    for size, (_, fp32_features, images) in probes.items():
        features = session.run(None, {INPUT_NAME: images})[0]
        per_head = {head.label: compare(head.responses(fp32_features), head.responses(features)) for head in heads}
        fidelity[f"size_{size}"] = {
            "features": compare(fp32_features, features),
            "responses_min_correlation": min(s["min_correlation"] for s in per_head.values()),
            "responses_max_relative_error": max(s["relative_error"] for s in per_head.values()),
            "per_head": per_head}
    record = {"graph": path.relative_to(staging).as_posix(),
              "method": PRECISION_WRITERS[precision].__doc__.split(".")[0].strip(),
              "fidelity_vs_fp32": fidelity}
    data = path.with_name(path.name + ".data")
    if data.is_file():
        record["data"] = data.relative_to(staging).as_posix()
    return record


def _check_head(model_id: str, where: str, scaler: dict, pcas: list, regressions: list,
                metadata: dict) -> int:
    """Shapes the folded head relies on, and the metadata labels the runtime reads; returns K,
    the number of components used."""
    entry = catalog.model_entry(model_id)
    features = backbone_features(entry.backbone)
    used = np.shape(regressions[0]["coef_"])[1] if np.ndim(regressions[0]["coef_"]) == 2 else 0
    problems = []
    for output in entry.outputs:
        rows = int(np.prod([axis.size for axis in output.axes]))
        for block in output.blocks:
            coef, intercept = np.shape(regressions[block]["coef_"]), np.shape(regressions[block]["intercept_"])
            if coef != (rows, used) or intercept != (rows,):
                problems.append(f"regression {entry.head.blocks[block].regression} has coef_ {coef} and "
                                f"intercept_ {intercept}, expected ({rows}, {used}) and ({rows},)")
        for axis in output.axes:
            labels = nested_value(metadata, axis.labels)
            if axis.labels and (labels is None or len(labels) != axis.size):
                problems.append(f"metadata {axis.labels} has {None if labels is None else len(labels)} "
                                f"values, expected {axis.size}")
    for index, pca in enumerate(pcas):
        components = np.shape(pca["components_"])
        if len(components) != 2 or components[0] < used or components[1] != features or used < 1:
            problems.append(f"PCA {index + 1} components_ {components} cannot give {used} components of "
                            f"{features} features")
    for key in ("mean_", "scale_"):
        if np.shape(scaler.get(key)) != (features,):
            problems.append(f"StandardScaler {key} has shape {np.shape(scaler.get(key))}")
    for rule in entry.selection.values():
        if rule.kind == "names":  # the runtime selects by the manifest's names: they must be these
            axis = next(o.axis(rule.axis) for o in entry.outputs if o.axis(rule.axis))
            labels = nested_value(metadata, axis.labels)
            if labels is None or [str(v) for v in labels] != list(entry.names(rule.names)):
                problems.append(f"metadata {axis.labels} differ from the manifest's {rule.names} in their order")
    if problems:
        raise ExportError(f"{where}: " + "; ".join(problems))
    return used


def _folded_head(scaler: dict, pcas: list, regressions: list, per_block: bool,
                 used: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The head graph's four weight inputs: pca_matrix, pca_bias (folded_pca), coef [P, K, O]
    and intercept [P, O]."""
    if per_block:  # [P, K, rows]: each block after its own PCA
        coef = np.stack([np.asarray(r["coef_"], np.float32).T for r in regressions])
        intercept = np.stack([np.asarray(r["intercept_"], np.float32) for r in regressions])
        pca_matrix, pca_bias = folded_pca(scaler, pcas, used)
    else:  # [1, K, all rows]: every block after the one PCA
        coef = np.concatenate([np.asarray(r["coef_"], np.float32) for r in regressions]).T[None]
        intercept = np.concatenate([np.asarray(r["intercept_"], np.float32) for r in regressions])[None]
        pca_matrix, pca_bias = folded_pca(scaler, pcas[:1], used)
    return pca_matrix, pca_bias, np.ascontiguousarray(coef), intercept


def _head_sidecar(model_id: str, subject, variant: str, names: dict, inputs: dict, weight_files: dict,
                  metadata: dict, per_block: bool, used: int, toolkit_format: dict, source_records: list,
                  parity: dict) -> dict[str, Any]:
    """A head's sidecar: its contract (what it takes and gives), its toolkit format, sources and parity."""
    pca_matrix, pca_bias, coef, intercept = (inputs[name] for name in
                                             (PCA_MATRIX_NAME, PCA_BIAS_NAME, COEF_NAME, INTERCEPT_NAME))
    blocks, outputs = coef.shape[0], coef.shape[2]
    backbone_graph = catalog.backbone(backbone_of(model_id)).graph
    contract = contract_header(
        role="head", model_id=model_id, subject=subject, variant=variant, backbone=backbone_of(model_id),
        graph=names["head"],
        inputs=[graph_output_input(FEATURES_NAME, "float32", ["N", int(pca_matrix.shape[0])], backbone_graph,
                                   FEATURES_NAME),
                *[file_input(name, "float32", list(inputs[name].shape), path) for name, path in weight_files.items()]],
        outputs=[{"name": RESPONSES_NAME, "dtype": "float32", "shape": ["N", int(blocks * coef.shape[2])],
                  "arrays": output_arrays(model_id, metadata, blocks)}],
        selection=("output column j is block p = j // O, column o = j % O (O = coef.shape[2]): components of "
                   "block p @ coef[p, :, o] + intercept[p, o]. To compute fewer outputs, feed coef[:, :, J] and "
                   "intercept[:, J] for the columns J you want: with P = 1 any J (columns of the arrays, C order "
                   "over each array's shape); with P > 1 the same o in every block, and the output holds "
                   "block after block"),
        recommended_batch=HEAD_BATCH,
        memory={"weights_bytes": int(pca_matrix.nbytes + pca_bias.nbytes + coef.nbytes + intercept.nbytes),
                "working_bytes_per_image": int(4 * (pca_matrix.shape[0] + pca_matrix.shape[1]
                                                    + blocks * coef.shape[2]))})
    sidecar = {
        "contract": contract,
        "model_id": model_id, "subject": subject, "variant": variant, "backbone": backbone_of(model_id),
        "toolkit_format": toolkit_format,
        "features": backbone_features(backbone_of(model_id)),
        "components": int(used), "pca_blocks": int(blocks), "outputs": int(outputs),
        "output_arrays": [output.as_json() for output in catalog.model_entry(model_id).outputs],
        "output_layout": ("responses[:, p*O + o] = block p's regression row o" if per_block else
                          "responses: the regression blocks' rows one after the other"),
        "inputs": {FEATURES_NAME: ["N", "features"], PCA_MATRIX_NAME: ["features", int(blocks * used)],
                   PCA_BIAS_NAME: [int(blocks * used)], COEF_NAME: [int(blocks), int(used), "O"],
                   INTERCEPT_NAME: [int(blocks), "O"]},
        "opset": OPSET,
        "provenance": {"sources": source_records},
        "parity": parity,
    }
    return sidecar


def _export_head(nest_dir, staging, manifest, model_id, subject, variant, probes) -> WrittenHead:
    """Write one subject's (and variant's) head and check it against the reference."""
    import onnx
    import onnxruntime as ort
    from .head_reference import float64_head, reference_head
    files = toolkit.head_files(nest_dir, model_id, subject, variant)
    where = f"{model_id} subject {subject}" + ("" if variant == "all" else f" {variant}") + \
        f" ({', '.join(str(f) for f in files.values())})"
    weights, found_format = toolkit.load_head(nest_dir, model_id, subject, variant)
    metadata = toolkit.load_npy_dict(files["metadata"])
    scaler, pcas, regressions, per_block = toolkit.head_blocks(weights, model_id, where)
    used = _check_head(model_id, where, scaler, pcas, regressions, metadata)
    pca_matrix, pca_bias, coef, intercept = _folded_head(scaler, pcas, regressions, per_block, used)
    blocks = coef.shape[0]
    label = catalog.subject_label(subject)
    names = {key: pattern.format(subject_label=label, variant=variant)
             for key, pattern in catalog.model_entry(model_id).bundle_files.items()}
    head_path = staging / names["head"]
    head_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(head_model(pca_matrix.shape[0], used, blocks, doc=f"NEST {model_id} subject {subject} {variant}"),
              head_path)
    np.save(staging / names["pca_matrix"], pca_matrix)
    np.save(staging / names["pca_bias"], pca_bias)
    np.save(staging / names["regression_coef"], coef)
    np.save(staging / names["regression_intercept"], intercept)
    save_flat_npz(staging / names["metadata"], metadata)

    session = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    inputs = {PCA_MATRIX_NAME: pca_matrix, PCA_BIAS_NAME: pca_bias, COEF_NAME: coef, INTERCEPT_NAME: intercept}
    weight_files = {PCA_MATRIX_NAME: names["pca_matrix"], PCA_BIAS_NAME: names["pca_bias"],
                    COEF_NAME: names["regression_coef"], INTERCEPT_NAME: names["regression_intercept"]}

    def responses(features: np.ndarray) -> np.ndarray:
        return session.run(None, {FEATURES_NAME: features, **inputs})[0]

    parity = {}
    for size, (torch_features, onnx_features, _) in probes.items():
        # the head alone on identical (torch) features; end to end from each side's own backbone
        expected = reference_head(torch_features, scaler, pcas, regressions)
        record = {**compare(expected, responses(onnx_features)),
                  "network": network_stats(float64_head(torch_features, scaler, pcas, regressions), expected,
                                           responses(torch_features))}
        refuse_network(record, f"{where}: the head graph", size)
        parity[f"size_{size}"] = record
    source_records = record_sources(nest_dir, list(files.values()), manifest)
    outputs = coef.shape[2]
    backbone_graph = catalog.backbone(backbone_of(model_id)).graph
    sidecar = _head_sidecar(model_id, subject, variant, names, inputs, weight_files, metadata, per_block, used,
                            {**found_format, "pca": "one per block" if per_block else "one shared"},
                            source_records, parity)
    write_sidecar(staging, names["head"], names["sidecar"], sidecar,
                   f"nest_rt head of {catalog.model_entry(model_id).description}; {where.split(' (')[0]}. "
                   f"Features of {backbone_graph} -> responses; its weights are inputs, read from the .npy "
                   f"files the contract names.")
    record_graph(manifest, model_id, subject, variant, {
        **names, "backbone": backbone_of(model_id), "components": int(used), "pca_blocks": int(blocks),
        "outputs": int(outputs), "toolkit_format": sidecar["toolkit_format"], "parity": parity})

    def responses_from_files(features: np.ndarray) -> np.ndarray:
        # read back when needed: holding every head's weights until the precision checks would
        # keep ten EEG subjects' 18 GB in memory
        return session.run(None, {FEATURES_NAME: features,
                                  **{name: np.load(staging / path) for name, path in weight_files.items()}})[0]
    return WrittenHead(where.split(" (")[0], names, weight_files, responses_from_files)
