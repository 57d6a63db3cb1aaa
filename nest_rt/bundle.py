"""Read an exported bundle: its manifest, and artifacts checked against their sha256."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from . import catalog
from .errors import BundleFileNotFoundError, BundleIntegrityError, NotExportedError
from .paths import confined
from .records import MapOf, Optional, check_shape, read_json

BUNDLE_MANIFEST = "bundle.json"
BUNDLE_FORMAT = "nest_rt.bundle/3"  # 2: the ViT heads take their PCA matrix as an input; 3: PCA blocks


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


class Bundle:
    """An exported bundle directory. Its manifest is checked for what the runtime relies on when
    the bundle is opened; every artifact is confined to the bundle folder and verified against
    its sha256 before it is used.

    The sha256 list detects corrupted or partly copied files. It does not detect deliberate
    changes: whoever can edit a file can edit bundle.json too. Compare bundle.json's own sha256
    with one from a trusted source (``nest-rt verify --expect-sha256``) to anchor the rest.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        manifest_path = self.root / BUNDLE_MANIFEST
        if not manifest_path.is_file():
            raise BundleFileNotFoundError(
                f"bundle_dir {str(self.root)!r} has no {BUNDLE_MANIFEST}: it is not an exported bundle. "
                "Create one with: nest-rt export --nest-dir TOOLKIT --out BUNDLE")
        self.manifest: dict[str, Any] = read_json(manifest_path, "bundle", BundleIntegrityError)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != BUNDLE_FORMAT:
            found = self.manifest.get("format") if isinstance(self.manifest, dict) else self.manifest
            raise BundleIntegrityError(f"{manifest_path} has format {found!r}; this nest_rt reads {BUNDLE_FORMAT!r}")
        check_manifest(self.manifest, manifest_path)
        self._verified: set[str] = set()

    def entry(self, model_id: str, subject: int | str, roi: str | None = None) -> dict[str, Any]:
        """The manifest entry of one exported model (per subject, and per ROI for fwRF or per
        variant for MEG: ``roi`` is that key), or NotExportedError saying how to export it."""
        graphs = self.manifest["models"].get(model_id, {}).get("graphs", {})
        found = graphs.get(str(subject), {}).get(roi or "all")
        if found is None:
            source = self.manifest.get("source", {}).get("nest_dir") or "TOOLKIT"
            per_roi = bool(roi) and not catalog.is_linear(model_id)  # fwRF graphs
            what = f"{model_id} subject {subject}" + (f" roi {roi}" if per_roi else
                                                      f" {roi}" if roi and roi != "all" else "")
            options = f"--models {model_id} --subjects {subject}" + (f" --rois {roi}" if per_roi else "")
            raise NotExportedError(
                f"bundle {str(self.root)!r} does not contain {what}; export it with: "
                f"nest-rt export --nest-dir {source} --out NEW_BUNDLE {options}")
        return found

    def path(self, relative: str) -> Path:
        """Absolute path of an artifact after checking that it lies in the bundle folder, exists
        and matches its sha256."""
        recorded = self.manifest["files"].get(relative) if isinstance(relative, str) else None
        if recorded is None:
            raise BundleIntegrityError(f"{relative!r} is not listed in {self.root / BUNDLE_MANIFEST}")
        full = confined(self.root, relative, f"bundle file {relative!r}", BundleIntegrityError)
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
        path = self.path(relative)
        content = read_json(path, "bundle file", BundleIntegrityError)
        if not isinstance(content, dict):
            raise BundleIntegrityError(f"bundle file {path} holds a JSON {type(content).__name__}, expected an object")
        return content

    def read_nested_npz(self, relative: str) -> dict[str, Any]:
        path = self.path(relative)
        try:
            return read_nested_npz(path)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise BundleIntegrityError(f"bundle file {path} is not a readable pickle-free npz "
                                       f"({str(exc).strip() or type(exc).__name__})") from exc


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Refuse (BundleIntegrityError) a manifest without the structure the runtime reads: every
    model entry with its files (listed with a sha256) and positive sizes, parity records, and a
    backbone for ViT heads. A damaged or hand-edited manifest then fails here, in one message,
    instead of as a KeyError deep inside a command."""
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise BundleIntegrityError(f"{where}: {message}; re-export or re-copy the bundle")

    def listed(name: Any) -> bool:
        return isinstance(name, str) and name in files

    check_shape(manifest, MANIFEST_SHAPE, str(where), BundleIntegrityError)
    files = manifest.get("files")
    require(isinstance(files, dict), "'files' must map file names to their sha256")
    for name, record in files.items():
        require(isinstance(record, dict) and isinstance(record.get("sha256"), str)
                and len(record["sha256"]) == 64, f"files[{name!r}] has no sha256")
    models = manifest.get("models")
    require(isinstance(models, dict), "'models' must be an object")
    known = catalog.models()
    for model_id, model in models.items():
        require(model_id in known, f"model {model_id!r} is not one this nest_rt knows (known: {sorted(known)})")
        graphs = model.get("graphs") if isinstance(model, dict) else None
        require(isinstance(graphs, dict), f"models[{model_id!r}] has no 'graphs'")
        artifacts = known[model_id].bundle_files
        sizes = ["components", "outputs", "pca_blocks"] if known[model_id].is_linear else ["voxels"]
        subjects = [str(s) for s in known[model_id].subjects]
        for subject, entries in graphs.items():
            require(subject in subjects and isinstance(entries, dict),
                    f"models[{model_id!r}] subject {subject!r} is not one of {subjects}")
            for key, entry in entries.items():
                what = f"{model_id} subject {subject} {key}"
                require(isinstance(entry, dict), f"{what} is not an object")
                for artifact in artifacts:
                    require(listed(entry.get(artifact)), f"{what}: its {artifact} file is not listed in 'files'")
                for size in sizes:
                    value = entry.get(size)
                    require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                            f"{what}: {size} must be a positive integer, got {value!r}")
                joined = entry.get("self_contained")  # nest-rt export --self-contained
                require(joined is None or (isinstance(joined, dict) and all(
                    listed(joined.get(key)) for key in ("graph", "data", "sidecar"))),
                    f"{what}: its self-contained graph's files are not listed in 'files'")
                joined_tolerance = (joined or {"tolerance": 0}).get("tolerance")
                require(isinstance(joined_tolerance, (int, float)) and not isinstance(joined_tolerance, bool),
                        f"{what}: its self-contained graph's tolerance is not a number")
                parity = entry.get("parity")  # empty only in demo bundles built without torch
                require(isinstance(parity, dict) and all(
                    isinstance(p, dict) and all(_is_number(p.get(k)) for k in _PARITY_KEYS)
                    and (not isinstance(p.get("network"), dict) or _is_number(p["network"].get("error_vs_float64")))
                    for p in parity.values()), f"{what}: no parity record")
    pregenerated = manifest.get("pregenerated", {"metadata": {}})
    require(isinstance(pregenerated, dict) and isinstance(pregenerated.get("metadata"), dict)
            and all(listed(name) for name in pregenerated["metadata"]), "'pregenerated' lists unlisted files")
    backbones = manifest.get("backbones", {})
    require(isinstance(backbones, dict), "'backbones' must be an object")
    for name, backbone in backbones.items():
        require(isinstance(backbone, dict) and isinstance(backbone.get("precisions", {}), dict),
                f"backbone {name!r} is not an object")
        require(listed(backbone.get("graph")) and listed(backbone.get("data"))
                and _is_number(backbone.get("features")) and isinstance(backbone["features"], int)
                and backbone["features"] >= 1,
                f"backbone {name!r} lacks its graph, data file or feature count")
        for precision, variant in backbone.get("precisions", {}).items():
            require(isinstance(variant, dict) and listed(variant.get("graph"))
                    and listed(variant.get("data", variant.get("graph"))),
                    f"backbone {name!r} precision {precision!r} lacks its files")


_PARITY_KEYS = ("min_correlation", "relative_error")

# What ``info`` and ``list`` print of the manifest besides its models (checked by check_manifest).
MANIFEST_SHAPE = {"source": Optional({"nest_dir": Optional(str), "layout": Optional(str)}, null=False),
                  "tools": Optional(MapOf((str, int, float)), null=False), "created_utc": Optional(str),
                  "opset": Optional(int)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def nested_value(tree: Any, path: str | None) -> Any:
    """``tree['a']['b']`` for the path 'a/b' (metadata and weight dicts), or None where any part
    is missing."""
    if path is None:
        return None
    node = tree
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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


def write_nested_npz(path, nested: dict) -> None:
    """Save a nested dict of arrays as npz with 'outer/inner' keys (the inverse of
    read_nested_npz) to a path or an open binary file. Object arrays are refused: they could only be stored pickled."""
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
