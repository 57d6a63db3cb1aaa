"""Image inputs of command-line runs: files, folders, glob patterns, or one uint8 array file.

Listing is deterministic (folders are walked recursively in sorted order, hidden files and
folders such as macOS ``._*`` files left out, and never the run's own output folder), and
every image's header is read before any model runs, so a run knows its full row order from
the start. Images are decoded as images.py describes (upright by their EXIF orientation, 8-bit
RGB); what that changes is listed in the run record. Images that cannot be read, or are not
square without ``center_crop``, are rejected: with ``skip_bad`` they are left out and listed,
otherwise the run stops before it starts, listing every one.
"""
from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import MissingExtraError, StimulusError, StimulusFileNotFoundError
from .images import header_facts, load_image_file

ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5")


@dataclass
class ImageList:
    """The images of a run in row order, with what was converted or rejected on the way."""

    paths: list[str]
    sides: list[int] = field(default_factory=list)  # square side after any crop, from the header
    converted: list[dict[str, Any]] = field(default_factory=list)  # {path, mode, conversion}
    oriented: list[dict[str, Any]] = field(default_factory=list)  # {path, orientation}: EXIF applied
    cropped: list[dict[str, Any]] = field(default_factory=list)  # {path, size}
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {path, reason}

    def digest(self) -> str:
        """Identity of the inputs: each path with its size and modification time (cheap, and
        it changes when a file is replaced)."""
        digest = hashlib.sha256()
        for path in self.paths:
            stat = os.stat(path)
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()


def image_suffixes() -> set[str]:
    """File suffixes that Pillow can open."""
    from PIL import Image
    return {suffix.lower() for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}


def list_image_files(specs: list[str], exclude: list[str | Path] = ()) -> list[str]:
    """Absolute paths of image files named by ``specs`` (files, folders, glob patterns), in
    order: specs as given, each folder and pattern sorted. Duplicates are kept once. Folders are
    walked without their hidden entries; nothing inside ``exclude`` (e.g. the output folder) is
    ever listed."""
    suffixes = image_suffixes()
    excluded = [Path(folder).resolve() for folder in exclude]

    def wanted(path: Path) -> bool:
        resolved = path.resolve()
        return not any(resolved == folder or folder in resolved.parents for folder in excluded)
    found: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            matches = sorted(str(p) for p in _walk(Path(spec), suffixes) if wanted(p))
            if not matches:
                raise StimulusError(f"inputs: folder {spec} holds no image files "
                                    f"(looked for {', '.join(sorted(suffixes)[:8])}, ...; hidden files are skipped)")
        elif os.path.isfile(spec):
            matches = [spec]
        elif any(character in spec for character in "*?["):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p) and wanted(Path(p)))
            if not matches:
                raise StimulusError(f"inputs: pattern {spec!r} matches no files")
        else:
            raise StimulusFileNotFoundError(f"inputs: no such file, folder or pattern: {spec}")
        found.extend(os.path.abspath(path) for path in matches)
    return list(dict.fromkeys(found))


def _walk(folder: Path, suffixes: set[str]):
    """Image files below ``folder``, leaving out hidden files and folders (names starting with
    '.': editor and OS leftovers such as macOS ``._photo.jpg``, which are not images)."""
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in suffixes:
                yield Path(root) / name


def scan_images(paths: list[str], center_crop: bool, skip_bad: bool,
                report: Callable[[str], Any] = print) -> ImageList:
    """Read every image's header: note conversions, orientations and crops, reject what cannot be
    encoded. Every rejected file is reported (``report``) with its reason."""
    from PIL import Image, UnidentifiedImageError
    images = ImageList(paths=[])
    for path in paths:
        try:
            with Image.open(path) as image:
                facts = header_facts(image, path)
        except (UnidentifiedImageError, OSError) as exc:
            images.rejected.append({"path": path, "reason": f"cannot read it as an image ({exc})"})
            continue
        except StimulusError as exc:  # a mode with no 8-bit meaning
            images.rejected.append({"path": path, "reason": str(exc).removeprefix(f"{path} ")})
            continue
        width, height = facts.size
        if width != height:
            if not center_crop:
                images.rejected.append({"path": path, "reason": f"not square ({width}x{height}); "
                                                                "pass --center-crop to crop it"})
                continue
            images.cropped.append({"path": path, "size": [width, height]})
        if facts.conversion():
            images.converted.append({"path": path, "mode": facts.mode, "conversion": facts.conversion()})
        if facts.orientation != 1:
            images.oriented.append({"path": path, "orientation": facts.orientation})
        images.paths.append(path)
        images.sides.append(min(width, height))
    for item in images.rejected:
        report(f"{'left out' if skip_bad else 'rejected'}: {item['path']}: {item['reason']}")
    if images.rejected and not skip_bad:
        raise StimulusError(f"inputs: {len(images.rejected)} image(s) cannot be encoded (listed above), first "
                            f"{images.rejected[0]['path']}; fix or remove them, or pass --skip-bad-images "
                            "to leave them out (they are then listed in run.json)")
    if not images.paths:
        raise StimulusError("inputs: no image can be encoded (all were rejected)")
    return images


def load_image(path: str) -> np.ndarray:
    """uint8 [3, S, S]: upright, RGB and, if not square, centre-cropped to its shorter side."""
    return load_image_file(path, "inputs")


def open_image_array(path: str, dataset: str | None = None):
    """A lazily read 4-D integer image array from ``.npy`` (memory-mapped) or HDF5 (``dataset``,
    or its only 4-D dataset). Values are checked per batch when the rows are read."""
    if not os.path.isfile(path):
        raise StimulusFileNotFoundError(f"inputs: no such array file: {path}")
    if path.lower().endswith(".npy"):
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise StimulusError(f"inputs: {path} is not a plain numpy array file ({exc})") from exc
        name = None
    else:
        array, name = _open_h5_dataset(path, dataset)
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.integer):
        raise StimulusError(f"inputs: {path} holds {array.dtype} {tuple(array.shape)}; expected uint8 images "
                            "[N, 3, S, S] or [N, S, S, 3]")
    return array, name


def _open_h5_dataset(path: str, dataset: str | None):
    try:
        import h5py
    except ImportError as exc:
        raise MissingExtraError("inputs: reading .h5 images needs h5py: pip install 'nest-rt[h5]'") from exc
    handle = h5py.File(path, "r")  # kept open for the run, read one batch at a time
    if dataset is None:
        candidates = [name for name, item in handle.items() if isinstance(item, h5py.Dataset) and item.ndim == 4]
        if len(candidates) != 1:
            raise StimulusError(f"inputs: {path} has 4-D datasets {candidates}; name one with --h5-dataset")
        dataset = candidates[0]
    if dataset not in handle:
        raise StimulusError(f"inputs: {path} has no dataset {dataset!r}; it has {sorted(handle)}")
    return handle[dataset], dataset
