"""``nest-rt export``: NEST or BERG toolkit directory -> self-contained, verified bundle.

The bundle is assembled in a temporary sibling directory and renamed into place only when
every graph has been written and checked, so an interrupted export leaves no half bundle.
The model-specific work lives in ``fwrf_export`` and ``linear_export``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import nest_rt
from nest_rt import catalog
from nest_rt.bundle import BUNDLE_FORMAT, BUNDLE_MANIFEST, sha256_file

from . import backbones, toolkit
from .errors import ExportError
from .contract import STANDARD_DOMAIN, operator_domains
from .fwrf_export import FWRF, export_fwrf, fwrf_jobs
from .onnx_graph import OPSET
from .parity import NETWORK_TOLERANCE, RESIZE_TOLERANCE
from .pregenerated import convert_pregenerated_metadata
from .linear_export import export_linear, linear_jobs, linear_models

__all__ = ["ExportError", "export_bundle"]


def export_bundle(nest_dir: str | Path, out: str | Path, models: list[str] | None = None,
                  subjects: list[int] | None = None, rois: list[str] | None = None,
                  weights: dict[str, str | Path] | None = None, precisions: tuple[str, ...] = (),
                  overwrite: bool = False, pregenerated: bool = False,
                  portable: bool = False, self_contained: bool = False,
                  log: Callable[[str], None] = print, vit_weights: str | Path | None = None,
                  alexnet_weights: str | Path | None = None) -> Path:
    """Export the requested models (default: every model found in the toolkit).

    ``subjects`` applies to every model (subjects a model does not have are skipped; TVSD's are
    'N' and 'F'), ``rois`` to the fwRF model. Every training split found is exported (MEG).
    ``weights`` maps a backbone's name (backbones/) to a torchvision state dict for it, e.g.
    {"vit_b_32": path, "alexnet": path}; a backbone without one gets its own file's default
    (the ViT and trained AlexNet: torchvision's ImageNet weights, downloaded or cached as upstream
    does; the untrained AlexNet is built from upstream's seed and takes none). ``vit_weights`` and
    ``alexnet_weights`` are the older spellings of weights["vit_b_32"] and weights["alexnet"].
    ``precisions`` adds opt-in backbones ('int8' for the CPU, 'fp16' for CUDA), each with its fidelity against fp32
    recorded. ``pregenerated`` converts the legacy toolkit's pregenerated response metadata to
    npz in the bundle (the .h5 responses stay in the toolkit).

    ``portable`` writes every graph in standard ONNX operators only (no onnxruntime-specific
    fused kernels) and resizes with MatMuls instead of Resize's antialias (which OpenVINO
    computes differently), for other engines; the export refuses a graph with other operators.
    ``self_contained`` adds, for every linear model's subject, one graph of backbone and head
    (uint8 images in, responses out, weights inside; see self_contained.py).
    """
    weights = _weights_by_backbone(weights, {"vit_b_32": vit_weights, "alexnet": alexnet_weights})
    nest_dir, out = Path(nest_dir).resolve(), Path(out).resolve()
    if not nest_dir.is_dir():
        raise ExportError(f"--nest-dir {nest_dir} is not a directory")
    _check_output(out, nest_dir, overwrite)
    requested = [catalog.canonical_id(model_id) for model_id in (models or catalog.models())]
    subjects = None if subjects is None else [_subject_value(s) for s in subjects]
    fwrf = fwrf_jobs(nest_dir, subjects, rois) if FWRF in requested else []
    linear = linear_jobs(nest_dir, [m for m in linear_models() if m in requested], subjects, strict=bool(models))
    if models:
        empty = [m for m in requested if not (fwrf if m == FWRF else linear.get(m))]
        if empty:
            raise ExportError(f"--nest-dir {nest_dir} holds no files for {empty} "
                              f"(subjects {subjects or 'any'}); see models_manifest.json for the file names")
    if not fwrf and not linear:
        raise ExportError(f"--nest-dir {nest_dir} holds no NEST models for subjects {subjects or 'any'} "
                          f"(expected files like {toolkit.fwrf_files(nest_dir, 1, 'V1')['weights'][0]})")
    manifest = new_manifest({"nest_dir": str(nest_dir), "layout": toolkit.detect_layout(nest_dir)}, _tools())
    manifest["portable"] = portable
    with staged_bundle(out, manifest) as staging:
        if pregenerated:  # first: cheap, and fails early on a toolkit without pregenerated files
            log("converting the pregenerated responses' metadata to npz")
            manifest["pregenerated"] = convert_pregenerated_metadata(nest_dir, staging)
        for subject, roi in fwrf:
            log(f"exporting {FWRF} subject {subject} roi {roi}")
            export_fwrf(nest_dir, staging, manifest, subject, roi, portable)
        if linear:
            export_linear(nest_dir, staging, manifest, linear, weights, log, precisions=tuple(precisions),
                          portable=portable, self_contained=self_contained)
        if portable:
            _refuse_non_standard_operators(staging)
    log(f"bundle written to {out}")
    return out


def _weights_by_backbone(weights: dict | None, older: dict[str, Any]) -> dict[str, Any]:
    """``weights`` with the older keyword arguments (``older``: backbone -> path or None) merged
    in, checked against the registry; the same backbone given two different paths is refused."""
    merged = dict(weights or {})
    for name, path in older.items():
        if path is not None:
            if merged.get(name) is not None and Path(merged[name]) != Path(path):
                raise ExportError(f"two weights files for the {name} backbone: {merged[name]} and {path}")
            merged[name] = path
    return backbones.checked_weights(merged)


def _refuse_non_standard_operators(staging: Path) -> None:
    """A portable bundle's promise, checked on the files written: no graph uses an operator
    outside standard ONNX (a quantiser or converter may add onnxruntime's own)."""
    import onnx
    others = {}
    for path in sorted(staging.rglob("*.onnx")):
        domains = [d for d in operator_domains(onnx.load(str(path), load_external_data=False)) if d != STANDARD_DOMAIN]
        if domains:
            others[path.relative_to(staging).as_posix()] = domains
    if others:
        raise ExportError(f"--portable: these graphs use operators outside standard ONNX: {others}")


def _subject_value(subject):
    """Subjects from the command line are text: numbers for most models, 'N'/'F' for TVSD."""
    return int(subject) if isinstance(subject, str) and subject.isdigit() else subject


@contextlib.contextmanager
def staged_bundle(out: Path, manifest: dict[str, Any]) -> Iterator[Path]:
    """A hidden staging folder beside ``out`` to write the bundle's files into. When the block
    finishes, every file is listed in the manifest with its sha256, bundle.json is written and the
    folder renamed to ``out`` (replacing an earlier bundle there); if it fails, nothing remains."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        staging.mkdir()
        yield staging
        manifest["files"] = {
            path.relative_to(staging).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
            for path in sorted(staging.rglob("*")) if path.is_file()}
        (staging / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _make_world_readable(staging)
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_world_readable(staging: Path) -> None:
    """Bundles are shared (a lab's models, a service account): every file readable by all, every
    folder listable, whatever the writer's umask or temporary-file mode (onnx's external data
    files are created 0600)."""
    staging.chmod(0o755)
    for path in staging.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


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


def new_manifest(source: dict[str, Any], tools: dict[str, str]) -> dict[str, Any]:
    """The skeleton of bundle.json; the exporters fill in models, backbones and sources."""
    return {
        "format": BUNDLE_FORMAT,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "opset": OPSET,
        "tools": tools,
        "source": source,
        "parity_tolerance": {"resize": RESIZE_TOLERANCE, "network": NETWORK_TOLERANCE},
        "models": {},
        "sources": {},
    }


def base_tools() -> dict[str, str]:
    """Versions of the tools that write every bundle."""
    import onnx
    import onnxruntime
    return {"nest_rt": nest_rt.__version__, "python": platform.python_version(), "numpy": np.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _tools() -> dict[str, str]:
    import torch
    import torchvision
    return {**base_tools(), "torch": torch.__version__, "torchvision": torchvision.__version__}


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
