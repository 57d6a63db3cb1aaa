"""What ``nest-rt list``, ``info`` and ``verify`` report about a bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import catalog
from .api import NEST
from .bundle import Bundle
from .errors import NotExportedError
from .selection import FSAVERAGE


def parity_summary(parity: dict[str, dict]) -> tuple[float, float]:
    """(lowest per-output correlation, largest relative error) over the image sizes checked."""
    return (min(p["min_correlation"] for p in parity.values()),
            max(p["relative_error"] for p in parity.values()))


def bundle_rows(bundle: Bundle) -> list[dict[str, Any]]:
    """One row per exported (model, subject, ROI)."""
    rows = []
    for model_id, model in bundle.manifest.get("models", {}).items():
        for subject, graphs in sorted(model.get("graphs", {}).items(), key=lambda item: int(item[0])):
            for key, entry in graphs.items():
                correlation, relative = parity_summary(entry["parity"])
                rows.append({"model_id": model_id, "subject": int(subject), "roi": None if key == "all" else key,
                             "outputs": int(entry.get("voxels", entry.get("outputs", 0))),
                             "min_correlation": correlation, "relative_error": relative,
                             "sizes": [name.replace("size_", "") for name in entry["parity"]]})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("model", "subject", "roi", "outputs", "parity corr", "rel. error")
    lines = [(r["model_id"], str(r["subject"]), r["roi"] or "-", f"{r['outputs']:,}",
              f"{r['min_correlation']:.7f}", f"{r['relative_error']:.1e}") for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


def model_info(bundle: Bundle, model_id: str) -> str:
    """A readable card: contract, dimensions, provenance and export parity of one model."""
    entry = catalog.model_entry(model_id)
    rows = [row for row in bundle_rows(bundle) if row["model_id"] == model_id]
    if not rows:
        raise NotExportedError(f"bundle {bundle.root} has no {model_id} models")
    source, tools = bundle.manifest.get("source", {}), bundle.manifest.get("tools", {})
    lines = [f"{model_id}  ({entry['catalog_modality']}, {entry['catalog_dataset']})",
             "  input:   images uint8 [N, 3, S, S], any square size S (resized inside the graph as upstream)",
             f"  output:  {_OUTPUT[entry['family'] if model_id != FSAVERAGE else 'fsaverage']}",
             f"  source:  {source.get('nest_dir')} ({source.get('layout')} layout), exported "
             f"{bundle.manifest.get('created_utc')} with "
             + ", ".join(f"{name} {version}" for name, version in tools.items()),
             f"  opset:   {bundle.manifest.get('opset')}"]
    backbone = bundle.manifest.get("backbones", {}).get(entry.get("backbone", ""), {})
    if backbone:
        precisions = ", ".join(["fp32", *backbone.get("precisions", {})])
        lines.append(f"  backbone: {entry['backbone']} ({backbone['features']:,} features; precisions {precisions})")
    lines.append("  exported (subject, roi: outputs, parity min correlation / max relative error):")
    for row in rows:
        lines.append(f"    sub-{row['subject']:02d} {row['roi'] or 'all':>10}: {row['outputs']:>7,}  "
                     f"{row['min_correlation']:.7f} / {row['relative_error']:.1e}  (at S = {', '.join(row['sizes'])})")
    return "\n".join(lines)


_OUTPUT = {"fwrf": "float32 [N, voxels] per ROI",
           "vit_b_32": "float32 [N, 4 repetitions, 63 channels, 140 times] (selectable channels/times)",
           "fsaverage": "float32 (lh [N, 163842], rh [N, 163842]) (selectable ROI or vertex masks)"}


def verify_bundle(bundle_dir: str | Path, device: str = "cpu", log=print) -> int:
    """Check every file's sha256, load every graph and run a probe batch through every model,
    requiring finite outputs. Returns the number of models checked; raises on the first fault."""
    nest = NEST(bundle_dir)
    bundle = nest.bundle
    files = bundle.manifest.get("files", {})
    for relative in files:
        bundle.path(relative)  # the runtime's own check; the models below then skip re-hashing
    log(f"sha256: {len(files)} files match bundle.json")
    probe = np.random.default_rng(0).integers(0, 256, size=(2, 3, 96, 96), dtype=np.uint8)
    rows = bundle_rows(bundle)
    for row in rows:
        selection = {"roi": row["roi"]} if row["roi"] else None
        model = nest.get_encoding_model(row["model_id"], subject=row["subject"], selection=selection,
                                        device=device)
        nest.encode(model, probe, show_progress=False)  # raises NonFiniteOutputError on NaN/inf
        del model
        nest.release_heads()  # one subject's head in memory at a time
        log(f"ok: {row['model_id']} sub-{row['subject']:02d}" + (f" {row['roi']}" if row["roi"] else ""))
    return len(rows)
