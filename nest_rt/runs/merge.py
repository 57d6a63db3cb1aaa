"""``merge_runs``: complete shard runs assembled into one run, as if it had run unsharded."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from typing import Any


from ..bundle import sha256_file
from ..errors import InvalidParameterError, OutputWriteError, RunStateError
from ..h5_copy import write_h5
from ..paths import confined
from ..run_files import (LOCK, PARTIAL, PROGRESS, RUN_RECORD, NpyRows, create_new_file, iter_npy_blocks, locked,
                         npy_header, read_run_record, write_failure, write_json_atomically)
from .chunks import progress_record


def merge_runs(shard_dirs: list[str | Path], out: str | Path, log=print) -> dict[str, Any]:
    """Assemble complete shard runs into one run, as if it had run unsharded. Checks that the
    shards are one run (same inputs, models, bundle and settings), complete, that every file
    named in their records stays inside its shard folder and matches its sha256, and that their
    rows cover the inputs with no gap and no overlap, all before anything is written; the copy is
    hashed again as it is read, so a file changed meanwhile is caught too."""
    out = Path(out)
    folders = [Path(folder) for folder in shard_dirs]
    if not folders:
        raise InvalidParameterError("merge: give the shard output folders")
    records = [read_run_record(folder, "merge") for folder in folders]  # every file name in them confined
    order = _shard_order(folders, records)
    total = records[0]["identity"]["total"]
    merged = json.loads(json.dumps(records[order[0]]))
    outputs = _merge_plan(folders, records, order, merged)
    if os.path.lexists(out):
        raise RunStateError(f"merge: --out {out} exists; choose a new folder")
    staging = _staging_folder(out)
    with locked(staging, "merging into"):
        for leftover in staging.iterdir():  # an interrupted merge's files, in a folder merge created
            if leftover.name not in (LOCK, STAGING_MARKER):
                shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
        merged["identity"]["shard"] = merged["shard"] = {"index": 0, "count": 1, "start": 0, "stop": total}
        merged["inputs"]["count"] = total
        if merged["inputs"]["kind"] == "files":
            merged["inputs"]["items"] = [item for i in order for item in records[i]["inputs"]["items"]]
            merged["inputs"]["rejected"] = _merged_rejections(records, order)
        for entry, (metadata_sources, arrays) in zip(merged["outputs"], outputs):
            target = staging / entry["metadata"]  # names of a record read_run_record confined
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(metadata_sources[0].read_bytes())
            except OSError as exc:
                raise write_failure(target, exc) from exc
            for array, sources in arrays.items():
                info = entry["arrays"][array]
                info["shape"][0] = total
                info["sha256"] = _copy_rows(sources, staging / info["file"], tuple(info["shape"]))
            if entry.get("h5"):
                write_h5({array: staging / info["file"] for array, info in entry["arrays"].items()},
                         staging / entry["h5"])
        write_json_atomically(staging / RUN_RECORD, merged)
        failed = [item for i in order for item in records[i]["inputs"].get("rejected") or [] if "row" in item]
        write_json_atomically(staging / PROGRESS, progress_record(range(-(-total // merged["chunk_size"])), failed))
        (staging / LOCK).unlink()
        if os.path.lexists(out):
            raise RunStateError(f"merge: --out {out} appeared while merging; the merged run is left in {staging}")
        os.replace(staging, out)
        (out / STAGING_MARKER).unlink()
    log(f"merged {len(folders)} shards ({total} images, {len(merged['outputs'])} outputs) into {out}")
    return merged


# Written into OUT.partial when merge creates it: only a folder holding it is ever emptied or reused.
STAGING_MARKER = ".nest-rt-merge-staging"


def _staging_folder(out: Path) -> Path:
    """OUT.partial: created here (with its marker), or left by an interrupted merge. Any other
    folder (or link, or file) under that name is someone else's: refused, never emptied or followed."""
    staging = out.with_name(out.name + PARTIAL)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(staging)
    except FileExistsError:
        if not _is_own_staging(staging):
            raise RunStateError(f"merge: {staging} exists and was not created by nest-rt merge; move it away "
                                "or choose another --out") from None
        return staging
    except OSError as exc:
        raise OutputWriteError(f"merge: --out {out}: {staging} cannot be created ({exc.strerror or exc})") from exc
    os.close(create_new_file(staging / STAGING_MARKER))
    return staging


def _is_own_staging(staging: Path) -> bool:
    """Whether ``staging`` is a real folder (not a link) holding merge's marker file (not a link)."""
    try:
        return (stat.S_ISDIR(os.lstat(staging).st_mode)
                and stat.S_ISREG(os.lstat(staging / STAGING_MARKER).st_mode))
    except OSError:
        return False


def _shard_order(folders: list[Path], records: list[dict]) -> list[int]:
    """The shards' positions in row order, after checking they are one run and cover it once."""
    first = records[0]["identity"]
    for folder, record in zip(folders, records):
        identity = record["identity"]
        differing = sorted(key for key in first if key != "shard" and identity.get(key) != first[key])
        if differing:
            raise RunStateError(f"merge: {folder} is not a shard of the same run as {folders[0]} "
                                f"(differs in: {', '.join(differing)})")
    order = sorted(range(len(records)), key=lambda i: records[i]["shard"]["index"])
    count, total = records[0]["shard"]["count"], first["total"]
    indices = [records[i]["shard"]["index"] for i in order]
    if indices != list(range(count)) or any(r["shard"]["count"] != count for r in records):
        missing = sorted(set(range(count)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise RunStateError(f"merge: need shards 0..{count - 1} once each; missing {missing}, repeated {repeated}")
    row = 0
    for i in order:
        shard = records[i]["shard"]
        if shard["start"] != row:
            raise RunStateError(f"merge: shard {shard['index']} starts at row {shard['start']}, expected {row}")
        row = shard["stop"]
    if row != total:
        raise RunStateError(f"merge: the shards cover {row} of {total} rows")
    return order


def _merge_plan(folders: list[Path], records: list[dict], order: list[int], merged: dict) -> list:
    """Per output: (metadata files, {array: source files in row order}), each source checked
    against the sha256 its shard recorded. The outputs' file names must be the same in every
    shard (the identity check covers the outputs, so they are); read_run_record has confined
    them to their shard folders."""
    plan = []
    for position, entry in enumerate(merged["outputs"]):
        # a record may name no metadata (read_run_record allows that), a merge needs it
        metadata = [confined(folders[i], records[i]["outputs"][position].get("metadata"), "merge: metadata",
                             RunStateError) for i in order]
        missing = [str(path) for path in metadata if not path.is_file()]  # (a named pipe would block)
        if missing:
            raise RunStateError(f"merge: {missing[0]} is missing or not a regular file")
        if len({sha256_file(path) for path in metadata}) != 1:
            raise RunStateError(f"merge: the shards' metadata files {metadata[0].name} differ")
        arrays = {}
        for i in order:  # the identity check covers the outputs' names, not their arrays
            if records[i]["outputs"][position]["arrays"].keys() != entry["arrays"].keys():
                raise RunStateError(f"merge: {folders[i]} and {folders[order[0]]} list different arrays for "
                                    f"{entry['name']}")
        for array in entry["arrays"]:
            sources = []
            for i in order:
                info = records[i]["outputs"][position]["arrays"][array]
                source = folders[i] / info["file"]
                if not source.is_file() or sha256_file(source) != info.get("sha256"):
                    raise RunStateError(f"merge: {source} does not match the sha256 in its run.json "
                                        "(modified, damaged or missing)")
                found = npy_header(source)[0]
                if list(found) != info["shape"] or info["shape"][1:] != entry["arrays"][array]["shape"][1:]:
                    raise RunStateError(f"merge: {source} has shape {list(found)}; its run.json says "
                                        f"{info['shape']} and the first shard's {entry['arrays'][array]['shape']}")
                sources.append((source, info["sha256"]))
            arrays[array] = sources
        plan.append((metadata, arrays))
    return plan


def _copy_rows(sources: list[tuple[Path, str]], target: Path, shape: tuple) -> str:
    """Concatenate the sources' rows into ``target``; each source is hashed again as it is read
    and must still match. Returns the sha256 of the written file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure(target, exc) from exc
    rows = NpyRows(target, shape, create=True)
    try:
        row = 0
        for source, expected in sources:
            digest = hashlib.sha256()
            for block in iter_npy_blocks(source, on_bytes=digest.update):
                rows.write(row, block)
                row += len(block)
            if digest.hexdigest() != expected:
                raise RunStateError(f"merge: {source} changed while it was being merged; run merge again")
        rows.sync()
    finally:
        rows.close()
    return sha256_file(target)


def _merged_rejections(records: list[dict], order: list[int]) -> list:
    """Images rejected before the run are the same in every shard; those that failed to decode
    during a shard's run are its own: the merged list has each once."""
    seen, merged = set(), []
    for i in order:
        for item in records[i]["inputs"].get("rejected") or []:
            key = json.dumps(item, sort_keys=True)
            if key not in seen:
                seen.add(key)
                merged.append(item)
    return merged
