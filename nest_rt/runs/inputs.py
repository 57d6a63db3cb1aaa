"""The images of a run (``RunInputs``: files or one array, served as Stimulus blocks by row) and
how they are cut into chunks and shards."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidParameterError, StimulusError
from ..image_files import ARRAY_SUFFIXES, ImageList, find_image_files, load_image, open_image_array, scan_images
from ..images import MAX_PIXELS_VARIABLE, Stimulus, is_channels_last
from ..run_files import shard_chunks


class RunInputs:
    """The full ordered input list (files or one array), served as Stimulus blocks by row."""

    def __init__(self, specs: list[str], center_crop: bool = False, skip_bad: bool = False,
                 h5_dataset: str | None = None, exclude: list[str | Path] = (), report=print):
        """``exclude``: folders never listed (the run's --out); ``report`` is told of every rejected
        image. With ``skip_bad``, images that fail to decode during the run are skipped too."""
        self.skip_bad = skip_bad
        self.pixel_limit = os.environ.get(MAX_PIXELS_VARIABLE)  # Ray workers decode under the same limit
        if not specs:
            raise StimulusError("inputs: give image files, folders, glob patterns or one .npy/.h5 array")
        self.array = None
        if len(specs) == 1 and specs[0].lower().endswith(ARRAY_SUFFIXES):
            self.array, dataset = open_image_array(os.path.abspath(specs[0]), h5_dataset)
            self.images: ImageList | None = None
            # the layout is recorded so that readers of the run (nest-rt plot) can show the images
            layout = "NHWC" if is_channels_last(self.array.shape, "inputs") else "NCHW"
            self.array_info = {"path": os.path.abspath(specs[0]), "dataset": dataset,
                               "shape": list(self.array.shape), "layout": layout}
            self.total = int(self.array.shape[0])
            stat = os.stat(specs[0])
            self.digest = hashlib.sha256(json.dumps([self.array_info, stat.st_size, stat.st_mtime_ns])
                                         .encode()).hexdigest()
        else:
            paths, not_images = find_image_files(specs, exclude)
            self.images = scan_images(paths, center_crop, skip_bad, report, not_images)
            self.total = len(self.images.paths)
            self.digest = self.images.digest()
        if self.total == 0:
            raise StimulusError("inputs: the array holds no images")

    def __getstate__(self) -> dict[str, Any]:
        """Sent to Ray workers without the array's rows: each worker opens the file again."""
        return {**self.__dict__, "array": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.pixel_limit is not None:
            os.environ[MAX_PIXELS_VARIABLE] = self.pixel_limit
        if self.images is None:
            self.array, _ = open_image_array(self.array_info["path"], self.array_info["dataset"])
            if list(self.array.shape) != self.array_info["shape"]:  # another file at that path on this node
                raise StimulusError(f"inputs: {self.array_info['path']} holds an array of shape "
                                    f"{list(self.array.shape)} here, {self.array_info['shape']} where the run began")

    def stimulus(self, start: int, stop: int, failed: list[dict] | None = None) -> tuple[Stimulus, np.ndarray]:
        """Rows start:stop as a Stimulus, and each Stimulus row's position in that range. Files
        are grouped by size so that mixed sizes still batch well; arrays keep their order.

        With ``skip_bad``, a file that fails to decode (e.g. truncated after a readable header) is
        appended to ``failed`` as {row, path, reason} and stands in as a black image; the caller
        fills its rows with NaN. Without it, the failure stops the run (finished chunks kept)."""
        if self.array is not None:
            return Stimulus(np.asarray(self.array[start:stop])), np.arange(stop - start)
        paths = self.images.paths[start:stop]
        order = np.argsort(self.images.sides[start:stop], kind="stable")
        sides = [self.images.sides[start + i] for i in order]

        def load(i: int) -> np.ndarray:
            try:
                return load_image(paths[order[i]], side=sides[i])
            except StimulusError as exc:
                if not self.skip_bad or failed is None:
                    raise StimulusError(f"{exc}; finished chunks are kept: remove or fix it and run the same "
                                        "command again, or add --skip-bad-images to leave it out") from exc
                failed.append({"row": start + int(order[i]), "path": paths[order[i]],
                               "reason": getattr(exc, "reason", f"cannot decode it ({exc})")})
                return np.zeros((3, sides[i], sides[i]), dtype=np.uint8)
        return Stimulus.lazy(sides, load), order

    def record(self, start: int, stop: int) -> dict[str, Any]:
        if self.images is None:
            return {"kind": "array", "total": self.total, "count": stop - start, "array": self.array_info,
                    "sha256": self.digest}
        return {"kind": "files", "total": self.total, "count": stop - start,
                "items": self.images.paths[start:stop], "converted": self.images.converted,
                "oriented": self.images.oriented, "cropped": self.images.cropped,
                "rejected": self.images.rejected, "not_images": self.images.not_images, "sha256": self.digest}


def chunk_ranges(total: int, chunk_size: int, shard: tuple[int, int]) -> list[tuple[int, int, int]]:
    """(chunk index, start, stop) of this shard's chunks; shards are runs of whole chunks."""
    index, count = shard
    chunks = shard_chunks(total, chunk_size, index, count)
    if not chunks:
        raise InvalidParameterError(f"--shard {index}/{count} gets no images: {total} images make "
                                    f"{-(-total // chunk_size)} chunks of {chunk_size}; use fewer shards or a "
                                    "smaller --chunk-size")
    return [(k, k * chunk_size, min((k + 1) * chunk_size, total)) for k in chunks]


def parse_shard(text: str) -> tuple[int, int]:
    index, slash, count = text.partition("/")
    try:
        index_value, count_value = int(index), int(count)
    except ValueError:
        raise InvalidParameterError(f"--shard must look like I/N (for example 0/4), got {text!r}") from None
    if not slash or count_value < 1 or not 0 <= index_value < count_value:
        raise InvalidParameterError(f"--shard {text!r}: need 0 <= I < N (shards are numbered from 0)")
    return index_value, count_value
