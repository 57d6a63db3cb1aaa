"""What every exporter writes besides graphs: errors, pickle-free metadata, source records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nest_rt.bundle import sha256_file


class ExportError(ValueError):
    """The toolkit or the request cannot be exported."""


def save_flat_npz(path: Path, nested: dict) -> None:
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


def record_sources(nest_dir: Path, paths: list[Path], manifest: dict) -> list[dict[str, Any]]:
    """sha256 and size of toolkit files, added to the bundle manifest and returned for a sidecar."""
    records = []
    for path in paths:
        relative = path.relative_to(nest_dir).as_posix()
        record = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        manifest["sources"][relative] = record
        records.append({"path": relative, **record})
    return records
