"""Image inputs of command-line runs: files, folders, glob patterns, or one uint8 array file.

Listing is deterministic (folders are walked recursively in sorted order, hidden files and
folders such as macOS ``._*`` files left out, and never the run's own output folder; other files
that are not images, and links to folders, are not read but listed), and
every image's header is read before any model runs, so a run knows its full row order from
the start. Images are decoded as images.py describes (upright by their EXIF orientation, 8-bit
RGB); what that changes is listed in the run record. Images that cannot be read (not regular
files, symbolic-link loops, too large, names that are not UTF-8), or are not square without
``center_crop``, are rejected: with ``skip_bad`` they are left out and listed, otherwise the run
stops before it starts, listing every one. An array file that cannot be read is refused.
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
from .images import load_image_file, open_regular_file, read_header, regular_file_problem, shown_path

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
    not_images: list[dict[str, str]] = field(default_factory=list)  # {path, reason}: found, never read

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


def find_image_files(specs: list[str], exclude: list[str | Path] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """Absolute paths of image files named by ``specs`` (files, folders, glob patterns), in
    order: specs as given, each folder and pattern sorted, duplicates kept once; and the other
    files found in the folders ({path, reason}: not images by their suffix, links to folders),
    which are not read. Folders are walked without their hidden entries; nothing inside
    ``exclude`` (e.g. the output folder) is ever listed. A file named that is not a regular file
    (a FIFO, a loop of symbolic links) is refused; one found in a folder is listed, and the
    header scan rejects it."""
    suffixes = image_suffixes()
    excluded = [os.path.realpath(folder) for folder in exclude]

    def wanted(path: str) -> bool:  # realpath, unlike Path.resolve, never raises (on a loop of links)
        resolved = os.path.realpath(path)
        return not any(resolved == folder or resolved.startswith(folder + os.sep) for folder in excluded)
    found: list[str] = []
    not_images: list[dict[str, str]] = []
    for spec in specs:
        if os.path.isdir(spec):
            images, others = _walk(spec, suffixes)
            matches = sorted(path for path in images if wanted(path))
            not_images += sorted((item for item in others if wanted(item["path"])), key=lambda item: item["path"])
            if not matches:
                raise StimulusError(f"inputs: folder {shown_path(spec)} holds no image files "
                                    f"(looked for {', '.join(sorted(suffixes)[:8])}, ...; hidden files are skipped)")
        elif os.path.lexists(spec):  # named: a regular file, or refused here
            problem = regular_file_problem(spec)
            if problem:
                raise StimulusFileNotFoundError(f"inputs: {shown_path(spec)}: {problem}; only regular image files "
                                                "are read")
            matches = [spec]
        elif any(character in spec for character in "*?["):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p) and wanted(p))
            if not matches:
                raise StimulusError(f"inputs: pattern {spec!r} matches no files")
        else:
            raise StimulusFileNotFoundError(f"inputs: no such file, folder or pattern: {shown_path(spec)}")
        found.extend(os.path.abspath(path) for path in matches)
    shown = {shown_path(os.path.abspath(item["path"])): item["reason"] for item in not_images}  # once each
    return list(dict.fromkeys(found)), [{"path": path, "reason": reason} for path, reason in shown.items()]


def _walk(folder: str, suffixes: set[str]) -> tuple[list[str], list[dict[str, str]]]:
    """Files below ``folder`` with an image suffix, and the other entries that are not followed
    ({path, reason}). Hidden files and folders (names starting with '.': editor and OS leftovers
    such as macOS ``._photo.jpg``, which are not images) are left out."""
    images, others = [], []
    for root, folders, files in os.walk(folder):
        for name in folders:
            if not name.startswith(".") and os.path.islink(os.path.join(root, name)):
                others.append({"path": os.path.join(root, name), "reason": "a link to a folder, not followed"})
        folders[:] = [name for name in folders if not name.startswith(".")]
        for name in files:
            if name.startswith("."):
                continue
            suffix = os.path.splitext(name)[1].lower()
            if suffix in suffixes:
                images.append(os.path.join(root, name))
            else:
                others.append({"path": os.path.join(root, name),
                               "reason": f"not an image file ({suffix or 'no'} suffix)"})
    return images, others


def scan_images(paths: list[str], center_crop: bool, skip_bad: bool, report: Callable[[str], Any] = print,
                not_images: list[dict[str, str]] = ()) -> ImageList:
    """Read every image's header: note conversions, orientations and crops, reject what cannot be
    encoded. Every rejected file is reported (``report``) with its reason, and so are the files
    ``not_images`` (found in the folders, not images), which are recorded too."""
    images = ImageList(paths=[], not_images=list(not_images))
    for path in paths:
        try:
            path.encode("utf-8")  # the run record (JSON) must name each file
            facts = read_header(path, "inputs")
        except UnicodeEncodeError:
            images.rejected.append({"path": shown_path(path), "reason": "its name is not valid UTF-8, which "
                                                                        "run.json (JSON) cannot record; rename it"})
            continue
        except StimulusError as exc:
            images.rejected.append({"path": path, "reason": getattr(exc, "reason", str(exc))})
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
    _report(images, skip_bad, report)
    if images.rejected and not skip_bad:
        raise StimulusError(f"inputs: {len(images.rejected)} image(s) cannot be encoded (listed above), first "
                            f"{images.rejected[0]['path']}; fix or remove them, or pass --skip-bad-images "
                            "to leave them out (they are then listed in run.json)")
    if not images.paths:
        raise StimulusError("inputs: no image can be encoded (all were rejected)")
    return images


SHOWN_NOT_IMAGES = 20  # listed one per line on the console; run.json lists them all


def _report(images: ImageList, skip_bad: bool, report: Callable[[str], Any]) -> None:
    for item in images.not_images[:SHOWN_NOT_IMAGES]:
        report(f"not read: {item['path']}: {item['reason']}")
    if len(images.not_images) > SHOWN_NOT_IMAGES:
        report(f"not read: {len(images.not_images) - SHOWN_NOT_IMAGES} more files that are not images "
               "(run.json lists every one under inputs.not_images)")
    for item in images.rejected:
        report(f"{'left out' if skip_bad else 'rejected'}: {item['path']}: {item['reason']}")


def load_image(path: str, side: int | None = None) -> np.ndarray:
    """uint8 [3, S, S]: upright, RGB and, if not square, centre-cropped to its shorter side.
    ``side``: the side its header gave (a file changed since is refused, naming it)."""
    return load_image_file(path, "inputs", side)


def open_image_array(path: str, dataset: str | None = None):
    """A lazily read 4-D integer image array from ``.npy`` (memory-mapped) or HDF5 (``dataset``,
    or its only 4-D dataset). Values are checked per batch when the rows are read. Only a regular
    file is opened; one that is not an array file is refused in one line naming it."""
    if path.lower().endswith(".npy"):
        array, name = _open_npy(path), None
    else:
        array, name = _open_h5_dataset(path, dataset)
    if array.ndim != 4 or not np.issubdtype(array.dtype, np.integer):
        raise StimulusError(f"inputs: {path} holds {array.dtype} {tuple(array.shape)}; expected uint8 images "
                            "[N, 3, S, S] or [N, S, S, 3]")
    return array, name


def _open_npy(path: str) -> np.ndarray:
    """A .npy file memory-mapped through a handle checked to be a regular file (never unpickled)."""
    with open_regular_file(path, "inputs") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(handle)
            if dtype.hasobject:
                raise ValueError("it holds Python objects, which are never unpickled")
            return np.memmap(handle, dtype=dtype, mode="r", shape=shape, order="F" if fortran_order else "C",
                             offset=handle.tell())
        except (ValueError, EOFError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StimulusError(f"inputs: {path} is not a plain numpy array file ({reason})") from exc


def _open_h5_dataset(path: str, dataset: str | None):
    try:
        import h5py
    except ImportError as exc:
        raise MissingExtraError("inputs: reading .h5 images needs h5py: pip install 'nest-rt[h5]'") from exc
    handle = open_regular_file(path, "inputs")  # kept open for the run, read one batch at a time
    try:
        file = h5py.File(handle, "r")
    except OSError as exc:
        handle.close()
        raise StimulusError(f"inputs: {path} is not an HDF5 file that h5py can read ({exc})") from exc
    if dataset is None:
        candidates = [name for name, item in file.items() if isinstance(item, h5py.Dataset) and item.ndim == 4]
        if len(candidates) != 1:
            raise StimulusError(f"inputs: {path} has 4-D datasets {candidates}; name one with --h5-dataset")
        dataset = candidates[0]
    if dataset not in file:
        raise StimulusError(f"inputs: {path} has no dataset {dataset!r}; it has {sorted(file)}")
    if not isinstance(file[dataset], h5py.Dataset):
        raise StimulusError(f"inputs: --h5-dataset {dataset!r} is a group in {path}, not a dataset; it holds "
                            f"{sorted(file[dataset])}")
    return file[dataset], dataset
