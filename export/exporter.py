"""``nest-rt export``: NEST toolkit directory -> self-contained, verified bundle.

The bundle is assembled in a temporary sibling directory and renamed into place only when
every graph has been written and checked, so an interrupted export leaves no half bundle.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

import nest_rt
from nest_rt import catalog
from nest_rt.bundle import BUNDLE_FORMAT, BUNDLE_MANIFEST, sha256_file

from . import toolkit
from .fwrf_onnx import INPUT_NAME, OPSET, OUTPUT_NAME, build_fwrf_graph
from .parity import FWRF_TOLERANCE, compare, within

FWRF = "fmri-nsd-fwrf"
SUPPORTED_MODELS = (FWRF,)
PARITY_SIZES = (227, 256)  # the native size (no resize) and one resized size
PARITY_IMAGES = 8


class ExportError(ValueError):
    """The toolkit or the request cannot be exported."""


def export_bundle(nest_dir: str | Path, out: str | Path, models: list[str] | None = None,
                  subjects: list[int] | None = None, rois: list[str] | None = None,
                  overwrite: bool = False, log: Callable[[str], None] = print) -> Path:
    nest_dir, out = Path(nest_dir).resolve(), Path(out).resolve()
    if not nest_dir.is_dir():
        raise ExportError(f"--nest-dir {nest_dir} is not a directory")
    _check_output(out, nest_dir, overwrite)
    models = list(models or SUPPORTED_MODELS)
    for model_id in models:
        catalog.model_entry(model_id)
        if model_id not in SUPPORTED_MODELS:
            raise ExportError(f"--models {model_id}: export of this model is not implemented yet; "
                              f"supported: {list(SUPPORTED_MODELS)}")
    jobs = _fwrf_jobs(nest_dir, subjects, rois)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        manifest = _new_manifest(nest_dir)
        for subject, roi in jobs:
            log(f"exporting {FWRF} subject {subject} roi {roi}")
            _export_fwrf(nest_dir, staging, manifest, subject, roi)
        manifest["files"] = {
            path.relative_to(staging).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(staging.rglob("*")) if path.is_file()}
        (staging / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"bundle written to {out}")
    return out


def _check_output(out: Path, nest_dir: Path, overwrite: bool) -> None:
    """--out must be new, or (with overwrite) an earlier bundle; never the toolkit or a parent."""
    if out == nest_dir or out in nest_dir.parents or nest_dir in out.parents:
        raise ExportError(f"--out {out} must lie outside --nest-dir {nest_dir} (and not contain it)")
    if not out.exists():
        return
    if not overwrite:
        raise ExportError(f"--out {out} already exists; choose a new path or pass --overwrite")
    if not (out / BUNDLE_MANIFEST).is_file():
        raise ExportError(f"--out {out} exists and is not a bundle (no {BUNDLE_MANIFEST}); "
                          "--overwrite only replaces an earlier bundle")


def _fwrf_jobs(nest_dir: Path, subjects, rois) -> list[tuple[int, str]]:
    """(subject, ROI) pairs to export: what was asked for, where not asked, everything found.
    Explicitly requested ROIs must exist; a missing file is an error, never a silent skip."""
    found = toolkit.available_fwrf(nest_dir)
    subjects = [catalog.validate_subject(FWRF, s) for s in subjects] if subjects else sorted(found)
    rois = [catalog.validate_roi(FWRF, r) for r in rois] if rois else None
    jobs = []
    for subject in subjects:
        for roi in rois or found.get(subject, []):
            files = toolkit.fwrf_files(nest_dir, subject, roi)
            missing = [str(p) for p in [*files["weights"], files["metadata"]] if not p.is_file()]
            if missing:
                raise ExportError(f"subject {subject} roi {roi}: toolkit files missing: {missing}")
            jobs.append((subject, roi))
    if not jobs:
        raise ExportError(f"--nest-dir {nest_dir} holds no fwRF models for subjects {subjects or 'any'} "
                          f"(expected files like {toolkit.fwrf_files(nest_dir, 1, 'V1')['weights'][0]})")
    return jobs


def _new_manifest(nest_dir: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch
    import torchvision
    return {
        "format": BUNDLE_FORMAT,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": OPSET,
        "tools": {"nest_rt": nest_rt.__version__, "python": platform.python_version(),
                  "numpy": np.__version__, "torch": torch.__version__,
                  "torchvision": torchvision.__version__, "onnx": onnx.__version__,
                  "onnxruntime": onnxruntime.__version__},
        "source": {"nest_dir": str(nest_dir), "layout": toolkit.detect_layout(nest_dir)},
        "parity_tolerance": {"fmri-nsd-fwrf": FWRF_TOLERANCE},
        "models": {},
        "sources": {},
    }


def _export_fwrf(nest_dir: Path, staging: Path, manifest: dict, subject: int, roi: str) -> None:
    import onnx
    from .fwrf_torch import FwrfReference
    patterns = catalog.model_entry(FWRF)["bundle_files"]
    names = {key: pattern.format(subject=subject, roi=roi) for key, pattern in patterns.items()}
    files = toolkit.fwrf_files(nest_dir, subject, roi)
    checkpoints = [toolkit.load_checkpoint(path) for path in files["weights"]]
    for path, checkpoint in zip(files["weights"], checkpoints):
        if subject not in checkpoint["best_params"].get("fwrfs", {}):
            raise ExportError(f"{path} has no readout for subject {subject} under best_params['fwrfs']")
    parts = [(c["best_params"]["enc"], c["best_params"]["fwrfs"][subject]) for c in checkpoints]
    split_voxels = [len(readout["b"]) for _, readout in parts]
    metadata = toolkit.load_npy_dict(files["metadata"])
    if len(metadata.get("fmri", {}).get("ncsnr", [])) != sum(split_voxels):
        raise ExportError(f"subject {subject} roi {roi}: {files['metadata']} does not describe the "
                          f"{sum(split_voxels)} voxels of the checkpoints")
    model = build_fwrf_graph(parts, doc=f"NEST {FWRF} subject {subject} roi {roi}")
    graph_path = staging / names["graph"]
    graph_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, graph_path)
    parity = _measure_parity(FwrfReference.from_checkpoints(checkpoints, subject), graph_path,
                             seed=subject * 100 + catalog.rois(FWRF).index(roi))
    _save_flat_npz(staging / names["metadata"], metadata)
    sources = []
    for path in [*files["weights"], files["metadata"]]:
        relative = path.relative_to(nest_dir).as_posix()
        record = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest["sources"][relative] = record
        sources.append({"path": relative, **record})
    sidecar = {
        "model_id": FWRF, "subject": subject, "roi": roi, "voxels": sum(split_voxels),
        "splits": split_voxels,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["N", 3, "S", "S"],
                  "values": "integers 0..255, RGB, channels first, square images of any size S"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", sum(split_voxels)],
                   "columns": "voxels in metadata order: column j is the j-th True voxel of "
                              "metadata fmri/roi_mask_volume in C order"},
        "preprocessing": ["resize to 227x227: bilinear, antialias, half-pixel centres "
                          "(torchvision Resize on integer tensors), rounded half to even",
                          "divide by 255", "subtract the checkpoint's mu (stim_mean), inside the graph"],
        "opset": OPSET,
        "provenance": {"sources": sources,
                       "training_args": [vars(c["args."]) for c in checkpoints],
                       "best_epoch": [int(c["best_epoch"]) for c in checkpoints]},
        "parity": parity,
    }
    (staging / names["sidecar"]).write_text(json.dumps(sidecar, indent=1, default=str), encoding="utf-8")
    graphs = manifest["models"].setdefault(FWRF, {"graphs": {}})["graphs"]
    graphs.setdefault(str(subject), {})[roi] = {**names, "voxels": sum(split_voxels), "parity": parity}


def _measure_parity(reference, graph_path: Path, seed: int) -> dict[str, Any]:
    """Torch reference vs onnxruntime on synthetic images at 227 and one other size."""
    import onnxruntime as ort
    from .synthetic import synthetic_images
    session = ort.InferenceSession(str(graph_path), providers=["CPUExecutionProvider"])
    results = {}
    for size in PARITY_SIZES:
        images = synthetic_images(PARITY_IMAGES, size, seed=seed + size)
        stats = compare(reference(images), session.run(None, {INPUT_NAME: images})[0])
        limits = FWRF_TOLERANCE["native" if size == PARITY_SIZES[0] else "resized"]
        if not within(stats, limits):
            raise ExportError(f"{graph_path.name}: onnxruntime disagrees with the torch reference at "
                              f"size {size}: {stats} (tolerance {limits})")
        results[f"size_{size}"] = stats
    return results


def _save_flat_npz(path: Path, nested: dict) -> None:
    """Save a nested dict of arrays as npz with 'outer/inner' keys; refuses object arrays."""
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}" if prefix else str(key), value)
            return
        array = np.asarray(node)
        if array.dtype == object:
            raise ExportError(f"metadata entry {prefix} holds Python objects; cannot store it pickle-free")
        flat[prefix] = array
    walk("", nested)
    np.savez(path, **flat)


def _remove_leftovers(out: Path) -> None:
    """Remove hidden staging folders that a killed export (SIGKILL, power loss) left beside --out."""
    for leftover in out.parent.glob(f".{out.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind.endswith((".partial", ".previous")) and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        previous = out.parent / f".{out.name}.previous-{os.getpid()}"
        os.replace(out, previous)
        os.replace(staging, out)
        shutil.rmtree(previous)
    else:
        os.replace(staging, out)
