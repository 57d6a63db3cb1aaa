"""What ``nest-rt list``, ``info`` and ``verify`` report about a bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import catalog
from .api import NEST
from .bundle import BUNDLE_MANIFEST, Bundle, sha256_file
from .errors import BundleIntegrityError, NotExportedError
from .sessions import resolve_device


def parity_summary(parity: dict[str, dict]) -> dict[str, float]:
    """Over the image sizes checked at export: the lowest per-output correlation and largest
    relative error end to end, and the network's largest error against float64 on identical
    pixels (NaN for bundles exported before it was measured)."""
    nan = float("nan")  # nothing measured: a bundle older than the network check, or a demo bundle
    network = [p["network"]["error_vs_float64"] for p in parity.values() if isinstance(p.get("network"), dict)]
    return {"min_correlation": min((p["min_correlation"] for p in parity.values()), default=nan),
            "relative_error": max((p["relative_error"] for p in parity.values()), default=nan),
            "network_error": max(network, default=nan)}


def bundle_rows(bundle: Bundle) -> list[dict[str, Any]]:
    """One row per exported (model, subject, ROI)."""
    rows = []
    for model_id, model in bundle.manifest["models"].items():
        order = [str(s) for s in catalog.subjects(model_id)]
        for subject, graphs in sorted(model["graphs"].items(), key=lambda item: order.index(item[0])):
            for key, entry in graphs.items():
                rows.append({"model_id": model_id, "subject": catalog.subject_key(model_id, subject),
                             "roi": None if key == "all" else key,
                             "outputs": int(entry.get("voxels", entry.get("outputs", 0))),
                             **parity_summary(entry["parity"]),
                             "sizes": [name.replace("size_", "") for name in entry["parity"]]})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("model", "subject", "roi/split", "outputs", "e2e corr", "e2e rel. error", "network error")
    lines = [(r["model_id"], str(r["subject"]), r["roi"] or "-", f"{r['outputs']:,}",
              _figure(r["min_correlation"], ".7f"), _figure(r["relative_error"], ".1e"),
              _figure(r["network_error"], ".1e")) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


def _figure(value: float, spec: str) -> str:
    return "not measured" if np.isnan(value) else format(value, spec)


def model_info(bundle: Bundle, model_id: str) -> str:
    """A readable card: contract, dimensions, provenance and export parity of one model."""
    entry = catalog.model_entry(model_id)
    rows = [row for row in bundle_rows(bundle) if row["model_id"] == model_id]
    if not rows:
        raise NotExportedError(f"bundle {bundle.root} has no {model_id} models")
    source, tools = bundle.manifest.get("source", {}), bundle.manifest.get("tools", {})
    origin = (f"{source['nest_dir']} ({source.get('layout')} layout)" if source.get("nest_dir")
              else source.get("layout", "unknown"))
    lines = [f"{model_id}  ({entry.catalog_modality}, {entry.catalog_dataset})",
             "  input:   images uint8 [N, 3, S, S], any square size S (resized inside the graph as upstream)",
             f"  output:  {catalog.describe_outputs(model_id)}",
             f"  source:  {origin}, exported "
             f"{bundle.manifest.get('created_utc')} with "
             + ", ".join(f"{name} {version}" for name, version in tools.items()),
             f"  opset:   {bundle.manifest.get('opset')}"]
    backbone = bundle.manifest.get("backbones", {}).get(entry.backbone, {}) if entry.backbone else {}
    if backbone:
        precisions = ", ".join(["fp32", *backbone.get("precisions", {})])
        lines.append(f"  backbone: {entry.backbone} ({backbone['features']:,} features; precisions {precisions})")
    lines.append("  exported (subject, roi or split: outputs; parity at export, end to end: min correlation / max "
                 "relative error; the network on identical pixels: max error vs float64):")
    for row in rows:
        lines.append(f"    sub-{catalog.subject_label(row['subject'])} {row['roi'] or 'all':>10}: {row['outputs']:>7,}  "
                     f"{_figure(row['min_correlation'], '.7f')} / {_figure(row['relative_error'], '.1e')}; "
                     f"{_figure(row['network_error'], '.1e')}"
                     + (f"  (at S = {', '.join(row['sizes'])})" if row["sizes"] else ""))
    return "\n".join(lines)


def verify_bundle(bundle_dir: str | Path, device: str = "auto", expect_sha256: str | None = None,
                  log=print) -> int:
    """Check a bundle the way the runtime uses it, reading everything it would read: bundle.json
    against a trusted sha256 (when given), every file's sha256 (inside the bundle folder), every
    sidecar and metadata file, every graph loaded, and a probe batch through every model with
    finite outputs. Returns the number of models checked; raises on the first fault."""
    if expect_sha256 is not None:
        manifest = Path(bundle_dir) / BUNDLE_MANIFEST
        actual = sha256_file(manifest) if manifest.is_file() else None
        if actual != expect_sha256.strip().lower():
            raise BundleIntegrityError(f"{manifest} has sha256 {actual}, not the expected {expect_sha256}: "
                                       "this is not the bundle you trust")
        log(f"bundle.json: sha256 {actual} as expected; the files below are checked against it")
    nest = NEST(bundle_dir)
    bundle = nest.bundle
    files = bundle.manifest["files"]
    for relative in files:
        bundle.path(relative)  # the runtime's own check; the models below then skip re-hashing
    log(f"sha256: {len(files)} files match bundle.json")
    for relative in bundle.manifest.get("pregenerated", {}).get("metadata", {}):
        bundle.read_nested_npz(relative)
    probe = np.random.default_rng(0).integers(0, 256, size=(2, 3, 96, 96), dtype=np.uint8)
    rows = bundle_rows(bundle)
    for row in rows:
        selection = {"roi": row["roi"]} if row["roi"] else None
        model = nest.get_encoding_model(row["model_id"], subject=row["subject"], selection=selection,
                                        device=device)
        # the metadata too (raises on a damaged file); NonFiniteOutputError on NaN/inf responses
        responses, _ = nest.encode(model, probe, return_metadata=True, show_progress=False)
        del model
        nest.release_heads()  # one subject's head in memory at a time
        name = f"{row['model_id']} sub-{row['subject']:02d}" + (f" {row['roi']}" if row["roi"] else "")
        log(f"ok: {name}")
        joined = bundle.entry(row["model_id"], row["subject"], row["roi"]).get("self_contained")
        if joined:
            error = _self_contained_error(bundle, joined, responses, probe, resolve_device(device))
            log(f"ok: {name} self-contained graph (relative difference {error:.1e} from the split graphs)")
    for name, backbone in bundle.manifest.get("backbones", {}).items():
        user = next((row for row in rows if catalog.model_entry(row["model_id"]).backbone == name), None)
        for precision in backbone.get("precisions", {}):
            if user is None or (precision == "fp16" and resolve_device(device) != "cuda"):
                why = "no model of the bundle runs on it" if user is None else "it runs on the CUDA provider only"
                log(f"sha256 only: the {precision} {name} backbone ({why})")
                continue
            other = NEST(bundle, precision=precision)  # the same Bundle: its files are not hashed again
            other.encode(other.get_encoding_model(user["model_id"], subject=user["subject"], device=device), probe,
                         show_progress=False)
            log(f"ok: the {precision} {name} backbone")
    return len(rows)


def _self_contained_error(bundle: Bundle, joined: dict, split_responses, probe: np.ndarray,
                          device: str) -> float:
    """The self-contained graph's responses to ``probe`` against the split graphs' (its columns
    are the split outputs (an array, or fsaverage's lh and rh) flattened, one after the other): max |difference| / max |split|,
    refused above the tolerance the export recorded."""
    from .sessions import create_session
    session = create_session(bundle.path(joined["graph"]), device)
    got = session.run(None, {session.get_inputs()[0].name: probe})[0]
    parts = split_responses if isinstance(split_responses, tuple) else (split_responses,)
    expected = np.concatenate([part.reshape(len(probe), -1) for part in parts], axis=1)
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise BundleIntegrityError(f"{joined['graph']} gives {got.shape} responses (finite: {np.isfinite(got).all()}), "
                                   f"the split graphs {expected.shape}")
    error = float(np.abs(got - expected).max() / max(np.abs(expected).max(), np.finfo(np.float32).tiny))
    if not error <= joined["tolerance"]:
        raise BundleIntegrityError(f"{joined['graph']} differs from the split graphs by {error:.2e} of the response "
                                   f"scale (tolerance {joined['tolerance']})")
    return error
