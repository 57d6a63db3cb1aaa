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
from typing import Any, Callable, Iterator

import numpy as np

from .errors import MissingExtraError, OutputWriteError, RunStateError
from .paths import confined

RUN_FORMAT = "nest_rt.run/1"
RUN_RECORD, PROGRESS, LOCK = "run.json", "progress.json", ".lock"
PARTIAL = ".partial"  # response and HDF5 files until the run is complete
TEMPORARY = ".tmp"    # run.json / progress.json until renamed into place
_COPY_BLOCK_BYTES = 64 * 2**20


def read_run_record(folder: Path, what: str, error: type[Exception] = RunStateError,
                    complete: bool = True) -> dict[str, Any]:
    """The run record of an encode output ``folder``, checked before anything is read through it:
    its format, that it is complete (with ``complete``), and that every file name in it stays
    inside ``folder``. Refusals are ``error``, prefixed with ``what`` (the argument's name)."""
    path = Path(folder) / RUN_RECORD
    if not path.is_file():
        raise error(f"{what}: expected a folder written by 'nest-rt encode --out', but {path} does not exist")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what}: cannot read {path} ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise error(f"{what}: {path} has format {found!r}, not a run record of format {RUN_FORMAT!r}")
    if complete and record.get("status") != "complete":
        raise error(f"{what}: the run in {folder} is {record.get('status')!r}, not 'complete'; "
                    "resume it with its 'nest-rt encode' command first")
    outputs = record.get("outputs")
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("arrays"), dict)
                                                for o in outputs):
        raise error(f"{what}: {path} lists no outputs")
    for output in outputs:
        names = [info.get("file") if isinstance(info, dict) else None for info in output["arrays"].values()]
        names += [output[key] for key in ("metadata", "h5") if output.get(key) is not None]
        for name in names:
            confined(Path(folder), name, f"{what}: {path}", error)
    return record


class NpyRows:
    """A float32 .npy file filled block by block with positioned writes. Not a memory map: a
    map's written pages would count towards the process's memory for the whole run."""

    def __init__(self, path: Path, shape: tuple, create: bool):
        self.path, self.shape = path, tuple(int(n) for n in shape)
        if create:
            try:
                with open(path, "wb") as handle:
                    np.lib.format.write_array_header_1_0(
                        handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                 "fortran_order": False, "shape": self.shape})
                    self.offset = handle.tell()
                    handle.truncate(self.offset + int(np.prod(self.shape, dtype=np.int64)) * 4)
            except OSError as exc:
                raise write_failure(path, exc) from exc
        else:
            found, self.offset = npy_header(path)
            if found != tuple(shape):
                raise RunStateError(f"{path} has shape {found}, this run needs {tuple(shape)}; "
                                    "remove the output folder to start again")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 4
        self._fd = os.open(path, os.O_RDWR)

    def write(self, row: int, block: np.ndarray) -> None:
        if block.shape[1:] != self.shape[1:] or not 0 <= row <= row + len(block) <= self.shape[0]:
            raise RunStateError(f"{self.path}: a block of shape {block.shape} does not fit rows {row}.. of "
                                f"an array of shape {self.shape}")
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
        raise write_failure(path, exc) from exc


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


def iter_npy_blocks(path: Path, max_bytes: int = _COPY_BLOCK_BYTES,
                    on_bytes: Callable[[bytes], Any] | None = None) -> Iterator[np.ndarray]:
    """Rows of a float32 .npy in blocks of at most ``max_bytes``, read with plain file reads.
    ``on_bytes`` is given every byte of the file in order (header included), e.g. to hash it."""
    shape, offset = npy_header(path)
    row_values = int(np.prod(shape[1:], dtype=np.int64))
    rows_per_block = max(1, max_bytes // max(1, row_values * 4))
    with open(path, "rb") as handle:
        header = handle.read(offset)
        if on_bytes is not None:
            on_bytes(header)
        for start in range(0, shape[0], rows_per_block):
            rows = min(rows_per_block, shape[0] - start)
            block = np.fromfile(handle, dtype=np.float32, count=rows * row_values)
            if len(block) != rows * row_values:
                raise RunStateError(f"{path} is shorter than its header says")
            if on_bytes is not None:
                on_bytes(block.data)
            yield block.reshape(rows, *shape[1:])
        if on_bytes is not None:
            on_bytes(handle.read())  # anything after the rows (nothing, in files nest-rt writes)


def write_h5(arrays: dict[str, Path], target: Path) -> None:
    """Copy finished .npy arrays into one HDF5 file laid out like upstream's pregenerated
    responses: dataset 'synthetic_neural_responses' (or 'lh' and 'rh'). Written to a temporary
    name first, so an interrupted copy leaves no .h5 behind.

    The copy runs in a child process: after a failed write (a full disk) the HDF5 library cannot
    close its file, and the process that tried crashes at its next HDF5 call or at exit. In a
    child, that failure becomes this process's one-line OutputWriteError."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("h5py") is None:
        raise MissingExtraError("--h5 needs h5py: pip install 'nest-rt[h5]'")
    temporary = target.with_name(target.name + PARTIAL)
    sources = json.dumps({name: str(path) for name, path in arrays.items()})
    child = subprocess.run([sys.executable, "-m", "nest_rt.h5_copy", str(temporary), sources],
                           capture_output=True, text=True)
    if child.returncode != 0:
        temporary.unlink(missing_ok=True)
        from .h5_copy import REASON_PREFIX
        reasons = [line[len(REASON_PREFIX):] for line in child.stderr.splitlines() if line.startswith(REASON_PREFIX)]
        reason = reasons[-1] if reasons else f"the HDF5 writer failed (exit {child.returncode})"
        raise write_failure(target, OSError(reason))
    os.replace(temporary, target)


def fill_h5(handle, arrays: dict[str, Path]) -> None:
    """Write the arrays into an open h5py File and flush it (run by nest_rt.h5_copy, see write_h5).
    The datasets stay referenced until the flush: a write failure then surfaces here, as an
    exception, rather than when a dataset is released."""
    datasets = []
    for name, source in arrays.items():
        shape, _ = npy_header(source)
        datasets.append(handle.create_dataset("synthetic_neural_responses" if name == "responses" else name,
                                              shape=shape, dtype=np.float32,
                                              chunks=(min(shape[0], 64), *shape[1:]) if all(shape) else None))
        row = 0
        for block in iter_npy_blocks(source):
            datasets[-1][row:row + len(block)] = block
            row += len(block)
    handle.flush()


def write_json_atomically(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + TEMPORARY)
    text = json.dumps(data, indent=1)
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise write_failure(path, exc) from exc


def write_failure(path: Path, exc: OSError) -> OutputWriteError:
    """The one-line error for any failed write of a run's files."""
    return OutputWriteError(f"writing {path} failed ({exc.strerror or exc}); fix the cause and run the same "
                            "command again (an encode run resumes from its finished chunks)")


def _fsync_folder(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def locked(out: Path, activity: str = "writing"):
    """Refuse a second process writing the same output folder at the same time. Creating the
    lock file is also the check that the folder is writable."""
    try:
        handle = open(out / LOCK, "a")
    except OSError as exc:
        raise OutputWriteError(f"--out {out} is not writable ({exc.strerror or exc})") from exc
    with handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunStateError(f"another nest-rt process is {activity} {out}; wait for it to finish") from None
        yield
