"""The run: ``encode_run`` plans the outputs, checks or resumes its folder, has the chunks encoded
(see chunks) and finishes the run (files renamed into place, HDF5 copies, run.json complete)."""
from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .. import catalog
from ..api import NEST
from ..bundle import Bundle, sha256_file, write_nested_npz
from ..errors import InvalidParameterError, OutputWriteError, RunStateError
from ..h5_copy import write_h5
from ..limits import DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_THREADS
from ..run_files import (LOCK, PARTIAL, PROGRESS, RUN_FORMAT, RUN_RECORD, TEMPORARY, NpyRows, create_new_file, locked,
                         read_progress, read_run_record, write_failure, write_json_atomically)
from .chunks import encode_chunks, progress_record
from .inputs import RunInputs, chunk_ranges
from .outputs import Output, planned_outputs



def versions() -> dict[str, str]:
    import onnxruntime

    from .. import __version__
    return {"nest_rt": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def encode_run(bundle_dir: str | Path, inputs: RunInputs, model_specs: list[str], out: str | Path,
               imageset: str, shard: tuple[int, int] = (0, 1), chunk_size: int = DEFAULT_CHUNK_SIZE,
               h5: bool = False, device: str = "auto", num_threads: int | None = None,
               precision: str = "fp32", show_progress: bool = True, log=print, engine=None) -> dict[str, Any]:
    """Encode ``inputs`` with every requested model into ``out``; resume a matching unfinished
    run there. Returns the finished run record. ``engine`` (nest_rt.ray.RayEngine) runs the
    chunks on a Ray cluster; this process still plans, writes and records them."""
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise InvalidParameterError(f"--chunk-size must be 1 to {MAX_CHUNK_SIZE}, got {chunk_size}")
    _check_threads(num_threads, log if engine is None else None)  # Ray's workers run on the cluster's cores
    if not imageset or "/" in imageset or imageset.startswith("."):
        raise InvalidParameterError(f"--imageset must be a plain folder name, got {imageset!r}")
    out = Path(out)
    # with Ray the models run in the workers: here they only plan the files, on the CPU in fp32
    # (so that a driver without the workers' GPUs can run a --device cuda or fp16 run)
    nest = NEST(bundle_dir, num_threads=num_threads, precision=precision if engine is None else "fp32")
    chunks = chunk_ranges(inputs.total, chunk_size, shard)  # cheap checks before the models load
    _check_precision(nest.bundle, precision, model_specs)
    start, stop = chunks[0][1], chunks[-1][2]
    outputs = planned_outputs(nest, model_specs, imageset, device if engine is None else "cpu")
    identity = {
        "format": RUN_FORMAT, "imageset": imageset, "inputs_sha256": inputs.digest, "total": inputs.total,
        "shard": {"index": shard[0], "count": shard[1], "start": start, "stop": stop},
        "chunk_size": chunk_size, "precision": precision, "h5": h5,
        "bundle_sha256": sha256_file(nest.bundle.root / "bundle.json"),
        "outputs": [[o.name, o.request.selection] for o in outputs],
        # responses of other versions may differ in the last bits: never mixed in one run
        "versions": {name: version for name, version in versions().items() if name in ("nest_rt", "onnxruntime")},
    }
    record = {"format": RUN_FORMAT, "status": "running", "identity": identity, "imageset": imageset,
              "inputs": inputs.record(start, stop), "shard": identity["shard"], "chunk_size": chunk_size,
              "bundle": {"path": str(nest.bundle.root.resolve()), "manifest_sha256": identity["bundle_sha256"]},
              "outputs": [_output_record(o, stop - start, h5) for o in outputs], "versions": versions(),
              "devices": sorted({o.model.device for o in outputs}) if engine is None else [device],
              "engine": {"kind": "local"} if engine is None else engine.describe()}
    # with Ray, the cluster is joined first: one that does not answer fails before --out is touched;
    # the folder is locked before it is looked at: a second encode starting now waits for none of it
    with engine.connected() if engine is not None else contextlib.nullcontext(), locked(_made(out)):
        _check_folder(out)
        state = _resume_state(out, identity)
        if state is None:  # the run is already complete
            log(f"{out} already holds this complete run; nothing to do")
            return read_run_record(out, "--out")
        done, failed = state
        partial_files = [out / (o.array_file(a) + PARTIAL) for o in outputs for a in o.shapes]
        if done and not all(path.exists() for path in partial_files) and not _finishing(out, outputs):
            log(f"{out}: response files of the earlier run are missing; starting it again")
            done, failed = set(), []
        todo = [chunk for chunk in chunks if chunk[0] not in done]
        write_json_atomically(out / RUN_RECORD, _json_ready(record))
        if todo:  # (none left: an earlier process was interrupted while finishing)
            files = _open_files(out, outputs, stop - start, create=not done)
            if not done:
                write_json_atomically(out / PROGRESS, progress_record([], []))
            rejected = len(inputs.images.rejected) if inputs.images else 0
            log(f"encoding {stop - start} images ({len(todo)} of {len(chunks)} chunks to do"
                + (f", {rejected} rejected images listed in run.json" if rejected else "")
                + f") with {len(outputs)} model outputs into {out}")
            try:
                workers = None
                if engine is not None:  # the workers load their models now; the record says how many
                    workers = engine.start(bundle_dir, model_specs, imageset, device, num_threads, precision, inputs,
                                           log)
                    record["engine"] = engine.describe()
                encode_chunks(inputs, outputs, files, todo, done, failed, start, out, device, show_progress,
                               total_rows=stop - start, log=log, workers=workers)
                if workers is not None and workers.devices:
                    record["devices"] = sorted(workers.devices)  # as the workers resolved --device
            finally:
                for per_output in files:
                    for handle in per_output.values():
                        handle.close()
        if failed:
            record["inputs"]["rejected"] = record["inputs"].get("rejected", []) + sorted(failed, key=lambda f: f["row"])
            log(f"{len(failed)} image(s) failed to decode; their rows hold NaN and run.json lists them "
                "under inputs.rejected (with their row)")
        return _finish(out, outputs, record, h5)


def _check_threads(num_threads: int | None, log=None) -> None:
    """Refuse a thread count no machine has (onnxruntime starts that many OS threads in each of
    the run's sessions, one per graph); with ``log``, warn above this machine's cores, where every
    thread more makes the run slower (16 threads on 2 cores: 7x)."""
    if num_threads is None:
        return
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or not 1 <= num_threads <= MAX_THREADS:
        raise InvalidParameterError(f"--threads must be 1 to {MAX_THREADS}, got {num_threads!r}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if log is not None and num_threads > cores:
        log(f"warning: --threads {num_threads} is more than the {cores} CPU cores this process may use; "
            "onnxruntime runs slower with more threads than cores")


def _check_precision(bundle: Bundle, precision: str, model_specs: list[str]) -> None:
    """A precision other than fp32 picks a lower-precision backbone: refuse it for a run whose
    models have no backbone (fwRF), where it would be recorded but change nothing, and when the
    bundle lacks it (checked here too for Ray runs, whose driver plans the models in fp32)."""
    if precision == "fp32":
        return
    model_ids = sorted({catalog.canonical_id(str(spec).split(":")[0]) for spec in model_specs})
    backbones = sorted({catalog.model_entry(m).backbone for m in model_ids if catalog.is_linear(m)})
    if not backbones:
        raise InvalidParameterError(f"--precision {precision}: only the backbones of the linear models have other "
                                    f"precisions, and {', '.join(model_ids)} has none; use --precision fp32")
    for name in backbones:
        available = ["fp32", *bundle.manifest.get("backbones", {}).get(name, {}).get("precisions", {})]
        if precision not in available:
            raise InvalidParameterError(f"--precision {precision}: the bundle's {name} backbone has "
                                        f"{', '.join(available)}; export one with --precisions {precision}")


def _finishing(out: Path, outputs: list[Output]) -> bool:
    """Whether an earlier process was interrupted while renaming finished files into place."""
    return any((out / o.array_file(a)).exists() for o in outputs for a in o.shapes)


def _output_record(output: Output, rows: int, h5: bool) -> dict[str, Any]:
    return {"name": output.name, "model_id": output.request.model_id, "subject": output.request.subject,
            "selection": output.request.selection,
            **({"variant": output.request.variant} if output.request.variant else {}),
            "arrays": {array: {"file": output.array_file(array), "shape": [rows, *shape], "dtype": "float32"}
                       for array, shape in output.shapes.items()},
            "axes": output.axes, "metadata": output.metadata_file, "h5": output.h5_file if h5 else None}


def _json_ready(value):
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _made(out: Path) -> Path:
    """``out``, created if need be (see _make_folder)."""
    _make_folder(out)
    return out


def _make_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputWriteError(f"--out {out} cannot be created ({exc.strerror or exc})") from exc


# What a run leaves at the top of its folder besides run.json: written before run.json exists
# (the lock) or left by a write that never finished (a full disk, SIGKILL before its rename).
_OWN_LEFTOVERS = (LOCK, RUN_RECORD + TEMPORARY, PROGRESS + TEMPORARY)


def _check_folder(out: Path) -> None:
    """A new run needs an empty folder: anything but a run's own leftovers is someone else's."""
    if os.path.lexists(out / RUN_RECORD):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_LEFTOVERS)
    if foreign:
        raise RunStateError(f"--out {out} is not empty and holds no nest-rt run ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); choose a new folder")
    for name in _OWN_LEFTOVERS[1:]:
        (out / name).unlink(missing_ok=True)


def _resume_state(out: Path, identity: dict) -> tuple[set[int], list[dict]] | None:
    """Finished chunk indices of a matching earlier run and the images that failed to decode in
    them (empty for a new run), or None if that run is complete. A different earlier run is
    refused, never mixed with this one."""
    if not os.path.lexists(out / RUN_RECORD):
        return set(), []
    previous = read_run_record(out, "--out", complete=False)
    if previous["identity"] != identity:
        differing = sorted(key for key in identity if previous["identity"].get(key) != identity[key])
        raise RunStateError(f"--out {out} holds a different run (differs in: {', '.join(differing)}); "
                            "use a new --out folder, or repeat the original command to resume it")
    if previous["status"] == "complete":
        return None
    if not os.path.lexists(out / PROGRESS):
        return set(), []
    return read_progress(out)


def _open_files(out: Path, outputs: list[Output], rows: int, create: bool) -> list[dict[str, NpyRows]]:
    files = []
    for output in outputs:
        try:
            (out / output.folder).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(out / output.folder, exc) from exc
        metadata_path = out / output.metadata_file
        if not metadata_path.exists():
            temporary = metadata_path.with_name(metadata_path.name + TEMPORARY)
            fd = create_new_file(temporary)  # never written through a planted symbolic link
            try:
                with os.fdopen(fd, "wb") as handle:  # a handle: np.savez would append .npz to the name
                    write_nested_npz(handle, output.metadata)
                os.replace(temporary, metadata_path)
            except OSError as exc:
                temporary.unlink(missing_ok=True)
                raise write_failure(metadata_path, exc) from exc
        files.append({array: NpyRows(out / (output.array_file(array) + PARTIAL), (rows, *shape),
                                     create or not (out / (output.array_file(array) + PARTIAL)).exists())
                      for array, shape in output.shapes.items()})
    return files


def _finish(out: Path, outputs: list[Output], record: dict, h5: bool) -> dict[str, Any]:
    """Rename the finished files into place, add HDF5 copies, and mark the run complete. Safe to
    repeat after an interruption: each step checks what is already done."""
    for output, entry in zip(outputs, record["outputs"]):
        for array, info in entry["arrays"].items():
            final = out / info["file"]
            partial = final.with_name(final.name + PARTIAL)
            if os.path.islink(partial):
                raise RunStateError(f"{partial} is a symbolic link, not a file nest-rt wrote; remove {out} "
                                    "and run again")
            if partial.exists():
                os.replace(partial, final)
            elif not final.exists():
                raise RunStateError(f"{partial} is missing; remove {out} and run again")
            info["sha256"] = sha256_file(final)
        if h5 and not (out / output.h5_file).exists():
            write_h5({array: out / info["file"] for array, info in entry["arrays"].items()}, out / output.h5_file)
    record["status"] = "complete"
    write_json_atomically(out / RUN_RECORD, _json_ready(record))
    return record
