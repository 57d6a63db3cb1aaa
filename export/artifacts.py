"""What every exporter writes besides graphs: pickle-free metadata, source records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nest_rt.bundle import sha256_file, write_nested_npz

from .errors import ExportError


def save_flat_npz(path: Path, nested: dict) -> None:
    """Save a nested dict of arrays as npz with 'outer/inner' keys; refuses object arrays."""
    try:
        write_nested_npz(path, nested)
    except TypeError as exc:
        raise ExportError(str(exc)) from exc


def record_sources(nest_dir: Path, paths: list[Path], manifest: dict) -> list[dict[str, Any]]:
    """sha256 and size of toolkit files, added to the bundle manifest and returned for a sidecar."""
    records = []
    for path in paths:
        relative = path.relative_to(nest_dir).as_posix()
        record = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest["sources"][relative] = record
        records.append({"path": relative, **record})
    return records


def record_graph(manifest: dict, model_id: str, subject, key: str, record: dict[str, Any]) -> None:
    """Enter one exported graph in bundle.json: models[model_id].graphs[subject][key] (key: the
    fwRF's ROI, or a linear model's variant)."""
    graphs = manifest["models"].setdefault(model_id, {"graphs": {}})["graphs"]
    graphs.setdefault(str(subject), {})[key] = record
