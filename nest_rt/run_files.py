"""The files of encode runs, written so that an interruption at any moment leaves them usable.

- ``NpyRows``: a float32 .npy filled block by block with positioned writes and fsync'ed on demand;
- ``write_json_atomically``: a JSON file replaced in one rename (temporary file, fsync, rename,
  fsync of the folder), so readers see the old or the new version, never a mix;
- ``locked``: one writer per output folder.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .errors import OutputWriteError, RunStateError
from .paths import NotARegularFile, confined, open_regular
from .records import MapOf, OneOf, Optional, check_shape, read_json

RUN_FORMAT = "nest_rt.run/1"
RUN_RECORD, PROGRESS, LOCK = "run.json", "progress.json", ".lock"
PARTIAL = ".partial"  # response and HDF5 files until the run is complete
TEMPORARY = ".tmp"    # run.json / progress.json until renamed into place
_COPY_BLOCK_BYTES = 64 * 2**20


def read_run_record(folder: Path, what: str, error: type[Exception] = RunStateError,
                    complete: bool = True) -> dict[str, Any]:
    """The run record of an encode output ``folder``, checked before anything is read through it:
    its format and structure (``RUN_RECORD_SHAPE``), that the counts it declares agree, that it
    is complete (with ``complete``), and that every file name in it stays inside ``folder``.
    Refusals are ``error``, prefixed with ``what`` (the argument's name)."""
    path = Path(folder) / RUN_RECORD
    if not os.path.lexists(path):
        raise error(f"{what}: expected a folder written by 'nest-rt encode --out', but {path} does not exist")
    record = read_json(path, what, error)
    if not isinstance(record, dict) or record.get("format") != RUN_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise error(f"{what}: {path} has format {found!r}, not a run record of format {RUN_FORMAT!r}")
    check_shape(record, RUN_RECORD_SHAPE, f"{what}: {path}", error)
    _check_counts(record, f"{what}: {path}", error)
    if complete and record["status"] != "complete":
        raise error(f"{what}: the run in {folder} is {record['status']!r}, not 'complete'; "
                    "resume it with its 'nest-rt encode' command first")
    for output in record["outputs"]:
        names = [info["file"] for info in output["arrays"].values()]
        names += [output[key] for key in ("metadata", "h5") if output.get(key) is not None]
        for name in names:
            confined(Path(folder), name, f"{what}: {path}", error)
    return record


_COUNT = int
_SHARD = {"index": _COUNT, "count": _COUNT, "start": _COUNT, "stop": _COUNT}
RUN_RECORD_SHAPE = {
    "status": OneOf("running", "complete"),
    "identity": {"total": _COUNT, "chunk_size": _COUNT, "shard": _SHARD, "outputs": [list]},
    "imageset": str, "shard": _SHARD, "chunk_size": _COUNT,
    "inputs": {"kind": OneOf("files", "array"), "total": _COUNT, "count": _COUNT, "items": Optional([str]),
               "rejected": Optional([{"path": str, "reason": str, "row": Optional(_COUNT)}]),
               "array": Optional({"path": str, "dataset": Optional(str), "shape": [_COUNT],
                                  "layout": OneOf("NHWC", "NCHW")})},
    "outputs": [{"name": str, "model_id": str, "subject": (int, str), "selection": dict,
                 "arrays": MapOf({"file": str, "shape": [_COUNT], "sha256": Optional(str)}),
                 "metadata": Optional(str), "h5": Optional(str)}],
}


def _check_counts(record: dict, where: str, error: type[Exception]) -> None:
    """Every count the record declares agrees with what it describes: its shard's rows are the
    chunks of ``chunk_size`` that --shard gives, its inputs and every array have that many rows."""
    identity, shard, inputs = record["identity"], record["shard"], record["inputs"]
    total, chunk_size = identity["total"], record["chunk_size"]
    expected_shard = dict(shard)
    if chunk_size >= 1 and total >= 1 and 0 <= shard["index"] < shard["count"]:
        chunks = shard_chunks(total, chunk_size, shard["index"], shard["count"])
        expected_shard.update(start=chunks.start * chunk_size, stop=min(chunks.stop * chunk_size, total))
    facts = [(identity["shard"] == shard, "identity.shard differs from shard"),
             (identity["chunk_size"] == chunk_size and chunk_size >= 1, "chunk_size differs from identity's or is < 1"),
             (total >= 1 and inputs["total"] == total, "inputs.total differs from identity.total or is < 1"),
             (shard == expected_shard and shard["start"] < shard["stop"],
              f"shard {shard} is not the rows --shard {shard['index']}/{shard['count']} gives with {total} images "
              f"in chunks of {chunk_size}"),
             (inputs["count"] == shard["stop"] - shard["start"], f"inputs.count {inputs['count']} is not the "
              f"shard's {shard['stop'] - shard['start']} rows"),
             (len(identity["outputs"]) == len(record["outputs"]), "identity.outputs and outputs differ in length")]
    if inputs["kind"] == "files":
        items = inputs.get("items") or []
        facts.append((len(items) == inputs["count"], f"inputs.items lists {len(items)} files for "
                                                      f"{inputs['count']} rows"))
    else:
        shape = (inputs.get("array") or {}).get("shape", [])
        facts.append((shape[:1] == [total], f"inputs.array.shape {shape} does not hold {total} images"))
    rows = [item["row"] for item in inputs.get("rejected") or [] if item.get("row") is not None]
    facts.append((all(shard["start"] <= row < shard["stop"] for row in rows),
                  f"inputs.rejected names rows {rows} outside the shard's rows"))
    for output in record["outputs"]:
        for name, info in output["arrays"].items():
            facts.append((info["shape"][:1] == [inputs["count"]] and all(n >= 0 for n in info["shape"]),
                          f"{output['name']} {name} has shape {info['shape']}, not {inputs['count']} rows"))
    for holds, problem in facts:
        if not holds:
            raise error(f"{where}: {problem}; the record is damaged")


def shard_chunks(total: int, chunk_size: int, index: int, count: int) -> range:
    """The chunk indices of shard ``index`` of ``count``: shards are runs of whole chunks."""
    chunks = -(-total // chunk_size)
    return range(index * chunks // count, (index + 1) * chunks // count)


PROGRESS_SHAPE = {"chunks_done": [_COUNT], "failed": Optional([{"row": _COUNT, "path": str, "reason": str}])}


def read_progress(out: Path) -> tuple[set[int], list[dict]]:
    """The finished chunks and the images that failed in them, from ``out``'s progress.json."""
    where = f"--out {out}: damaged {PROGRESS} (remove the folder to start again)"
    progress = read_json(out / PROGRESS, where, RunStateError)
    check_shape(progress, PROGRESS_SHAPE, where, RunStateError)
    return set(progress["chunks_done"]), list(progress.get("failed") or [])


class NpyRows:
    """A float32 .npy file filled block by block with positioned writes. Not a memory map: a
    map's written pages would count towards the process's memory for the whole run."""

    def __init__(self, path: Path, shape: tuple, create: bool):
        self.path, self.shape = path, tuple(int(n) for n in shape)
        if create:
            fd = create_new_file(path)
            try:
                with os.fdopen(os.dup(fd), "wb") as handle:
                    np.lib.format.write_array_header_1_0(
                        handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                 "fortran_order": False, "shape": self.shape})
                    self.offset = handle.tell()
                    handle.truncate(self.offset + int(np.prod(self.shape, dtype=np.int64)) * 4)
            except OSError as exc:
                os.close(fd)
                raise write_failure(path, exc) from exc
        else:
            fd = open_own_file(path, os.O_RDWR)
            try:
                with os.fdopen(os.dup(fd), "rb") as handle:
                    found, self.offset = _read_npy_header(handle, path)
            except BaseException:
                os.close(fd)
                raise
            if found != self.shape:
                os.close(fd)
                raise RunStateError(f"{path} has shape {found}, this run needs {self.shape}; "
                                    "remove the output folder to start again")
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * 4
        self._fd = fd

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
        return _read_npy_header(handle, path)


def _read_npy_header(handle, path: Path) -> tuple[tuple, int]:
    try:
        version = np.lib.format.read_magic(handle)
        reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = reader(handle)
    except ValueError as exc:
        raise RunStateError(f"{path} is not a readable .npy file ({exc})") from None
    if fortran or dtype != np.float32:
        raise RunStateError(f"{path} is not a float32 C-order array")
    return tuple(shape), handle.tell()


def create_new_file(path: Path) -> int:
    """A new, empty file at ``path`` opened for writing (a descriptor), replacing what a run of
    nest-rt may have left under that name. Whatever is there is unlinked first, never followed:
    a symbolic link planted under a run's own file name is removed, not written through."""
    try:
        path.unlink(missing_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
    except IsADirectoryError as exc:
        raise RunStateError(f"{path} is a folder where nest-rt keeps one of its files; remove it") from exc
    except OSError as exc:
        raise write_failure(path, exc) from exc


def open_own_file(path: Path, flags: int) -> int:
    """A descriptor of the regular file ``path`` that a run wrote earlier; a symbolic link (never
    followed) or anything else under that name is refused."""
    try:
        return open_regular(path, flags | _NOFOLLOW)
    except NotARegularFile:
        raise RunStateError(f"{path} is not a regular file, not one nest-rt wrote; remove it") from None
    except OSError as exc:
        if os.path.islink(path):
            raise RunStateError(f"{path} is a symbolic link, not a file nest-rt wrote; remove it") from None
        raise write_failure(path, exc) from exc


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


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


def write_json_atomically(path: Path, data: dict) -> None:
    temporary = path.with_name(path.name + TEMPORARY)
    text = json.dumps(data, indent=1)
    fd = create_new_file(temporary)  # never written through a planted symbolic link
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
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
    path = out / LOCK
    not_ours = f"--out {out}: {LOCK} is not a regular file (not nest-rt's lock file); remove it"
    try:
        fd = open_regular(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NOFOLLOW)
    except NotARegularFile:
        raise RunStateError(not_ours) from None
    except OSError as exc:
        if os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path)):
            raise RunStateError(not_ours) from None
        raise OutputWriteError(f"--out {out} is not writable ({exc.strerror or exc})") from exc
    with os.fdopen(fd, "a") as handle:
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
