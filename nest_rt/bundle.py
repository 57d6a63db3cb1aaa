"""Read an exported bundle: its manifest, and artifacts checked against their sha256."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import (BundleFileNotFoundError, BundleIntegrityError, NotExportedError)

BUNDLE_MANIFEST = "bundle.json"
BUNDLE_FORMAT = "nest_rt.bundle/2"  # 2: the ViT heads take their PCA matrix as an input


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """An exported bundle directory. Every artifact is verified before it is used."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise BundleFileNotFoundError(
                f"bundle_dir {str(self.root)!r} has no {BUNDLE_MANIFEST}: it is not an exported bundle. "
                "Create one with: nest-rt export --nest-dir TOOLKIT --out BUNDLE")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleIntegrityError(f"{manifest_path} is not valid JSON ({exc})") from exc
        if self.manifest.get("format") != BUNDLE_FORMAT:
            raise BundleIntegrityError(f"{manifest_path} has format {self.manifest.get('format')!r}; "
                                       f"this nest_rt reads {BUNDLE_FORMAT!r}")
        self._verified: set[str] = set()

    def entry(self, model_id: str, subject: int, roi: str | None = None) -> dict[str, Any]:
        """The manifest entry of one exported model (per subject, and per ROI for fwRF), or
        NotExportedError saying how to export it."""
        graphs = self.manifest.get("models", {}).get(model_id, {}).get("graphs", {})
        found = graphs.get(str(subject), {}).get(roi or "all")
        if found is None:
            source = self.manifest.get("source", {}).get("nest_dir", "TOOLKIT")
            what = f"{model_id} subject {subject}" + (f" roi {roi}" if roi else "")
            options = f"--models {model_id} --subjects {subject}" + (f" --rois {roi}" if roi else "")
            raise NotExportedError(
                f"bundle {str(self.root)!r} does not contain {what}; export it with: "
                f"nest-rt export --nest-dir {source} --out NEW_BUNDLE {options}")
        return found

    def path(self, relative: str) -> Path:
        """Absolute path of an artifact after checking that it exists and matches its sha256."""
        recorded = self.manifest.get("files", {}).get(relative)
        full = self.root / relative
        if recorded is None:
            raise BundleIntegrityError(f"{relative} is not listed in {self.root / BUNDLE_MANIFEST}")
        if relative not in self._verified:
            if not full.is_file():
                raise BundleFileNotFoundError(f"bundle file missing: {full}")
            actual = sha256_file(full)
            if actual != recorded["sha256"]:
                raise BundleIntegrityError(
                    f"bundle file {full} is corrupted or was modified: sha256 {actual} does not match "
                    f"the recorded {recorded['sha256']}; re-export or re-copy the bundle")
            self._verified.add(relative)
        return full

    def read_json(self, relative: str) -> dict[str, Any]:
        return json.loads(self.path(relative).read_text(encoding="utf-8"))

    def read_nested_npz(self, relative: str) -> dict[str, Any]:
        return read_nested_npz(self.path(relative))


def read_nested_npz(path: str | Path) -> dict[str, Any]:
    """Rebuild a nested metadata dict from an npz whose keys are 'outer/inner' paths."""
    nested: dict[str, Any] = {}
    with np.load(path, allow_pickle=False) as arrays:
        for key in arrays.files:
            *parents, leaf = key.split("/")
            node = nested
            for part in parents:
                node = node.setdefault(part, {})
            value = arrays[key]
            # upstream stores names (EEG channels, image files) as lists of str
            node[leaf] = value.tolist() if value.dtype.kind == "U" and value.ndim == 1 else value
    return nested


def write_nested_npz(path: str | Path, nested: dict) -> None:
    """Save a nested dict of arrays as npz with 'outer/inner' keys (the inverse of
    read_nested_npz). Object arrays are refused: they could only be stored pickled."""
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}/{key}" if prefix else str(key), value)
            return
        array = np.asarray(node)
        if array.dtype == object:
            raise TypeError(f"metadata entry {prefix} holds Python objects; cannot store it pickle-free")
        flat[prefix] = array
    walk("", nested)
    np.savez(path, **flat)
