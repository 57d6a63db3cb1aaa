"""The files of encode runs, written so that an interruption at any moment leaves them usable.

- ``NpyRows``: a float32 .npy filled block by block with positioned writes and fsync'ed on demand;
- ``write_json_atomically``: a JSON file replaced in one rename (temporary file, fsync, rename,
  fsync of the folder), so readers see the old or the new version, never a mix;
- ``write_h5``: an HDF5 copy in upstream's pregenerated layout, renamed into place when whole;
- ``locked``: one writer per output folder.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import MissingExtraError, OutputWriteError, RunStateError

RUN_FORMAT = "nest_rt.run/1"
RUN_RECORD, PROGRESS, LOCK = "run.json", "progress.json", ".lock"
PARTIAL = ".partial"
_COPY_BLOCK_BYTES = 64 * 2**20


class NpyRows:
    """A float32 .npy file filled block by block with positioned writes. Not a memory map: a
    map's written pages would count towards the process's memory for the whole run."""

    def __init__(self, path: Path, shape: tuple, create: bool):
        self.path = path
        if create:
            with open(path, "wb") as handle:
                np.lib.format.write_array_header_1_0(
                    handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                             "fortran_order": False, "shape": tuple(shape)})
                self.offset = handle.tell()
                handle.truncate(self.offset + int(np.prod(shape)) * 4)
        else:
            found, self.offset = npy_header(path)
            if found != tuple(shape):
                raise RunStateError(f"{path} has shape {found}, this run needs {tuple(shape)}; "
                                    "remove the output folder to start again")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 4
        self._fd = os.open(path, os.O_RDWR)

    def write(self, row: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=np.float32)
        if data.size == 0:  # e.g. an ROI with no vertices in one hemisphere
            return
        _write_all(self._fd, memoryview(data).cast("B"), self.offset + row * self.row_bytes, self.path)

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _write_all(fd: int, data: memoryview, offset: int, path: Path) -> None:
    try:
        while data:
            written = os.pwrite(fd, data, offset)
            data, offset = data[written:], offset + written
    except OSError as exc:
        raise OutputWriteError(f"writing {path} failed ({exc.strerror}); finished chunks are kept: "
                               "fix the cause and run the same command again to resume") from exc


def npy_header(path: Path) -> tuple[tuple, int]:
    """(shape, data offset) of a float32 C-order .npy file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(handle)
        if fortran or dtype != np.float32:
            raise RunStateError(f"{path} is not a float32 C-order array")
        return tuple(shape), handle.tell()


def iter_npy_blocks(path: Path, max_bytes: int = _COPY_BLOCK_BYTES) -> Iterator[np.ndarray]:
    """Rows of a float32 .npy in blocks of at most ``max_bytes``, read with plain file reads."""
    shape, offset = npy_header(path)
    row_values = int(np.prod(shape[1:], dtype=np.int64))
    rows_per_block = max(1, max_bytes // max(1, row_values * 4))
    with open(path, "rb") as handle:
        handle.seek(offset)
        for start in range(0, shape[0], rows_per_block):
            rows = min(rows_per_block, shape[0] - start)
            block = np.fromfile(handle, dtype=np.float32, count=rows * row_values)
            yield block.reshape(rows, *shape[1:])


def write_h5(arrays: dict[str, Path], target: Path) -> None:
    """Copy finished .npy arrays into one HDF5 file laid out like upstream's pregenerated
    responses: dataset 'synthetic_neural_responses' (or 'lh' and 'rh'). Written to a temporary
    name first, so an interrupted copy leaves no .h5 behind."""
    try:
        import h5py
    except ImportError as exc:
        raise MissingExtraError("--h5 needs h5py: pip install 'nest-rt[h5]'") from exc
    temporary = target.with_name(target.name + PARTIAL)
    with h5py.File(temporary, "w") as handle:
        for name, path in arrays.items():
            shape, _ = npy_header(path)
            dataset = handle.create_dataset("synthetic_neural_responses" if name == "responses" else name,
                                            shape=shape, dtype=np.float32,
                                            chunks=(min(shape[0], 64), *shape[1:]) if all(shape) else None)
            row = 0
            for block in iter_npy_blocks(path):
                dataset[row:row + len(block)] = block
                row += len(block)
    os.replace(temporary, target)


def write_json_atomically(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def locked(out: Path):
    """Refuse a second process writing the same output folder at the same time."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(out / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunStateError(f"another nest-rt process is writing {out}; wait for it to finish") from None
        yield
