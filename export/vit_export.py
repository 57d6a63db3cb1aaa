"""Export of the ViT-B/32 models (EEG THINGS EEG2, fMRI NSD fsaverage) into a bundle.

One backbone graph serves every subject of both models; each subject gets a folded head, its
regression weights as .npy, its metadata as .npz and a sidecar. Parity against the torch +
scikit-learn reference (``vit_torch``) is checked as parity.py describes: the backbone's resize
against torchvision's, the backbone on identical pixels and each head on identical features
against float64, and end to end (recorded); a graph outside the tolerances is refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nest_rt import catalog

from . import toolkit
from .artifacts import ExportError, record_sources, save_flat_npz
from .checks import check_resize, refuse_network
from .onnx_graph import INPUT_NAME, OPSET
from .parity import compare, network_stats

EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
VIT_MODELS = (EEG, FSAVERAGE)
PARITY_SIZES = (256, 300)  # the transform's native size (no resize) and one resized size
PARITY_IMAGES = 8


def vit_jobs(nest_dir: Path, models: list[str], subjects: list[int] | None,
             strict: bool) -> dict[str, list[int]]:
    """Subjects to export per ViT model: the requested ones or all found. With ``strict`` (the
    model was named with --models) a requested subject without files is an error, else skipped."""
    jobs = {}
    for model_id in models:
        found = toolkit.available_subjects(nest_dir, model_id)
        if subjects is None:
            chosen = found
        else:
            valid = [catalog.validate_subject(model_id, s) for s in subjects if s in catalog.subjects(model_id)]
            missing = [s for s in valid if s not in found]
            if missing and strict:
                raise ExportError(f"{model_id}: toolkit files missing for subjects {missing}")
            chosen = [s for s in valid if s in found]
        if chosen:
            jobs[model_id] = chosen
    return jobs


def export_vit(nest_dir: Path, staging: Path, manifest: dict, jobs: dict[str, list[int]],
               vit_weights: str | Path | None, log: Callable[[str], None],
               precisions: tuple[str, ...] = ()) -> None:
    from .vit_onnx import RESIZE, backbone_model, save_with_external_data
    from .vit_torch import load_vit
    log("exporting the ViT-B/32 backbone (shared by every EEG and fsaverage subject)")
    vit = load_vit(vit_weights)
    backbone_entry = catalog.load_manifest()["backbones"]["vit_b_32"]
    graph_path = staging / backbone_entry["graph"]
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    written = save_with_external_data(backbone_model(vit), graph_path)
    resize_parity = check_resize(graph_path, (RESIZE, RESIZE), "the ViT-B/32 backbone graph")
    probes, parity = _backbone_parity(vit, graph_path)
    manifest.setdefault("backbones", {})["vit_b_32"] = {
        "graph": backbone_entry["graph"], "data": written[1].relative_to(staging).as_posix(),
        "features": backbone_entry["features"],
        "weights": _weights_provenance(vit_weights),
        "parity": parity,
        "resize_parity": resize_parity,
    }
    heads = []
    for model_id, subjects in jobs.items():
        for subject in subjects:
            log(f"exporting {model_id} subject {subject}")
            heads.append(_export_head(nest_dir, staging, manifest, model_id, subject, probes))
    for precision in precisions:
        log(f"writing the {precision} backbone (opt-in) and measuring its fidelity against fp32")
        manifest["backbones"]["vit_b_32"].setdefault("precisions", {})[precision] = _export_precision(
            staging, graph_path, probes, heads, precision)


def _backbone_parity(vit, graph_path: Path) -> tuple[dict, dict]:
    """Network and end-to-end parity of the backbone graph (see parity.py); refuses it outside
    the tolerance. Returns the probes the heads are checked on, per size: (torch features,
    onnxruntime features, images), and the parity record."""
    from .onnx_graph import RESIZED_PIXELS, probe_session
    from .synthetic import synthetic_images
    from .torch_reference import float64_copy
    from .vit_torch import VitFeatures, float64_features, reference_features
    features = VitFeatures(vit)
    in_float64 = float64_copy(features)
    session = probe_session(graph_path, [RESIZED_PIXELS])
    probes, parity = {}, {}
    for size in PARITY_SIZES:
        images = synthetic_images(PARITY_IMAGES, size, seed=size)
        onnx_features, pixels = session.run(None, {INPUT_NAME: images})
        same_pixels = np.clip(np.round(pixels), 0, 255).astype(np.uint8)  # at 256: no resize upstream
        on_same_pixels = reference_features(features, same_pixels)
        # where the pixels are the images (the native size), the end-to-end reference is the same run
        same = np.array_equal(same_pixels, images)
        torch_features = on_same_pixels if same else reference_features(features, images)
        record = {**compare(torch_features, onnx_features),
                  "network": network_stats(float64_features(in_float64, same_pixels), on_same_pixels,
                                           onnx_features)}
        refuse_network(record, "the ViT-B/32 backbone graph", size)
        probes[size], parity[f"size_{size}"] = (torch_features, onnx_features, images), record
    return probes, parity


def _export_precision(staging: Path, graph_path: Path, probes: dict, heads: list,
                      precision: str) -> dict[str, Any]:
    """Write a lower-precision backbone and record its fidelity against the fp32 backbone: per
    exported head, responses from its features vs from fp32 features on the parity images.
    fp16 is measured on the CPU provider with graph optimisations off (the CUDA provider, where
    it is meant to run, is not needed for the measurement)."""
    import onnxruntime as ort
    from .vit_onnx import PRECISION_WRITERS
    path = graph_path.with_name(f"backbone.{precision}.onnx")
    PRECISION_WRITERS[precision](graph_path, path)
    options = ort.SessionOptions()
    if precision == "fp16":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fidelity = {}
    for size, (_, fp32_features, images) in probes.items():
        features = session.run(None, {INPUT_NAME: images})[0]
        per_head = {label: compare(run(fp32_features), run(features)) for label, run in heads}
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


def _weights_provenance(vit_weights) -> dict[str, Any]:
    from nest_rt.bundle import sha256_file
    if vit_weights is None:
        return {"source": "torchvision ViT_B_32_Weights.IMAGENET1K_V1 (vit_b_32-d86f8d99.pth)"}
    return {"source": str(Path(vit_weights).resolve()), "sha256": sha256_file(Path(vit_weights))}


def _head_parts(nest_dir: Path, model_id: str, subject: int):
    """(scaler, pca, regression blocks in output order, metadata path, layout) of one subject."""
    if model_id == EEG:
        layout = toolkit.eeg_layout(nest_dir)
        files = toolkit.eeg_files(nest_dir, subject, layout)
        weights = toolkit.load_eeg_head(nest_dir, subject)
        blocks = [weights["reg_param"][f"rep-{r}"] for r in range(1, 5)]
    else:
        layout = toolkit.LAYOUT_CURRENT
        files = toolkit.fsaverage_files(nest_dir, subject)
        weights = toolkit.load_npy_dict(files["weights"])
        blocks = [weights["lh_reg_param"], weights["rh_reg_param"]]
    return weights, blocks, files["metadata"], list(files.values()), layout


def _check_head(model_id: str, subject: int, weights: dict, blocks: list, metadata: dict, files: list) -> int:
    """Shapes the folded head relies on; returns K, the number of components used."""
    entry = catalog.model_entry(model_id)
    features = catalog.load_manifest()["backbones"]["vit_b_32"]["features"]
    rows = 63 * 140 if model_id == EEG else entry["vertices_per_hemisphere"]
    used = np.shape(blocks[0]["coef_"])[1]
    problems = []
    for index, block in enumerate(blocks):
        if np.shape(block["coef_"]) != (rows, used) or np.shape(block["intercept_"]) != (rows,):
            problems.append(f"regression {index + 1} has coef_ {np.shape(block['coef_'])} and intercept_ "
                            f"{np.shape(block['intercept_'])}, expected ({rows}, {used}) and ({rows},)")
    components = np.shape(weights["pca_param"]["components_"])
    if len(components) != 2 or components[0] < used or components[1] != features:
        problems.append(f"PCA components_ {components} cannot give {used} components of {features} features")
    for key in ("mean_", "scale_"):
        if np.shape(weights["scaler_param"][key]) != (features,):
            problems.append(f"StandardScaler {key} has shape {np.shape(weights['scaler_param'][key])}")
    if model_id == EEG:
        if list(metadata["eeg"]["ch_names"]) != entry["channels"]:
            problems.append("metadata eeg/ch_names differ from the 63 THINGS EEG2 channels in their order")
        if len(metadata["eeg"]["times"]) != entry["times"]["count"]:
            problems.append(f"metadata eeg/times has {len(metadata['eeg']['times'])} points, expected 140")
    if problems:
        raise ExportError(f"{model_id} subject {subject} ({', '.join(str(f) for f in files)}): "
                          + "; ".join(problems))
    return used


def _export_head(nest_dir, staging, manifest, model_id, subject, probes):
    """Write one subject's head; returns (label, features -> responses) for precision checks."""
    import onnxruntime as ort
    import onnx
    from .vit_onnx import (COEF_NAME, FEATURES_NAME, INTERCEPT_NAME, PCA_BIAS_NAME, PCA_MATRIX_NAME,
                           folded_pca, head_model)
    from .vit_torch import float64_head, reference_eeg, reference_fsaverage
    weights, blocks, metadata_path, sources, layout = _head_parts(nest_dir, model_id, subject)
    metadata = toolkit.load_npy_dict(metadata_path)
    used = _check_head(model_id, subject, weights, blocks, metadata, sources)
    coef_t = np.ascontiguousarray(np.concatenate([np.asarray(b["coef_"], np.float32) for b in blocks]).T)
    intercept = np.concatenate([np.asarray(b["intercept_"], np.float32) for b in blocks])
    pca_matrix, pca_bias = folded_pca(weights["scaler_param"], weights["pca_param"], used)
    names = {key: pattern.format(subject=subject)
             for key, pattern in catalog.model_entry(model_id)["bundle_files"].items()}
    head_path = staging / names["head"]
    head_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(head_model(pca_matrix.shape[0], used, doc=f"NEST {model_id} subject {subject}"), head_path)
    np.save(staging / names["pca_matrix"], pca_matrix)
    np.save(staging / names["pca_bias"], pca_bias)
    np.save(staging / names["regression_coef"], coef_t)
    np.save(staging / names["regression_intercept"], intercept)
    save_flat_npz(staging / names["metadata"], metadata)

    session = ort.InferenceSession(str(head_path), providers=["CPUExecutionProvider"])
    inputs = {PCA_MATRIX_NAME: pca_matrix, PCA_BIAS_NAME: pca_bias, COEF_NAME: coef_t, INTERCEPT_NAME: intercept}

    def responses(features: np.ndarray) -> np.ndarray:
        return session.run(None, {FEATURES_NAME: features, **inputs})[0]

    def reference(features: np.ndarray) -> np.ndarray:
        if model_id == EEG:
            return reference_eeg(features, weights).reshape(len(features), -1)
        return np.concatenate(reference_fsaverage(features, weights), axis=1)
    parity = {}
    for size, (torch_features, onnx_features, _) in probes.items():
        # the head alone on identical (torch) features; end to end from each side's own backbone
        expected = reference(torch_features)
        record = {**compare(expected, responses(onnx_features)),
                  "network": network_stats(float64_head(torch_features, weights), expected,
                                           responses(torch_features))}
        refuse_network(record, f"{model_id} subject {subject}: the head graph", size)
        parity[f"size_{size}"] = record
    source_records = record_sources(nest_dir, sources, manifest)
    outputs = coef_t.shape[1]
    sidecar = {
        "model_id": model_id, "subject": subject, "backbone": "vit_b_32", "toolkit_layout": layout,
        "features": int(catalog.load_manifest()["backbones"]["vit_b_32"]["features"]),
        "components": int(used), "outputs": int(outputs),
        "output_layout": ("rows r*8820 + c*140 + t for repetition r, channel c, time t -> [N, 4, 63, 140]"
                          if model_id == EEG else "lh vertices 0..163841 then rh vertices 0..163841"),
        "inputs": {FEATURES_NAME: ["N", "features"], PCA_MATRIX_NAME: ["features", int(used)],
                   PCA_BIAS_NAME: [int(used)], COEF_NAME: [int(used), "O"], INTERCEPT_NAME: ["O"]},
        "opset": OPSET,
        "provenance": {"sources": source_records},
        "parity": parity,
    }
    (staging / names["sidecar"]).write_text(json.dumps(sidecar, indent=1), encoding="utf-8")
    graphs = manifest["models"].setdefault(model_id, {"graphs": {}})["graphs"]
    graphs.setdefault(str(subject), {})["all"] = {
        **names, "backbone": "vit_b_32",
        "components": int(used), "outputs": int(outputs), "parity": parity}
    return f"{model_id} subject {subject}", responses
