"""Encoding runs that write responses to files: chunked, resumable, shardable, bounded in memory.

``encode_run`` is what ``nest-rt encode`` does. The images (see image_files) are split into
chunks of ``chunk_size`` rows; a chunk counts as finished only once its rows are written and
fsync'ed and its index is recorded in ``progress.json`` (replaced atomically). Killing the process
at any moment therefore loses at most the chunk in flight, and running the same command again
resumes with the first unfinished chunk. Chunks sit at fixed positions of the full input list
(shards are runs of whole chunks), so every image is always encoded in the same batch and a
resumed, or a sharded and merged, run gives the same bytes as one uninterrupted run.

Layout of an output directory (readable without nest_rt: numpy, or h5py for --h5)::

    OUT/run.json                        the run record: inputs in row order, models, bundle sha256,
                                        versions, status ('running' or 'complete'), file sha256s
    OUT/progress.json                   finished chunks
    OUT/modality-M/train_dataset-D/model-X/imageset-I/
        synthetic_neural_responses_<stem>.npy          fwRF [N, V], EEG [N, 4, C, T] (float32)
        synthetic_neural_responses_<stem>_lh.npy/_rh.npy   fsaverage [N, vertices]
        synthetic_neural_responses_<stem>.h5           with --h5: upstream's pregenerated layout
        synthetic_neural_responses_metadata_<stem>.npz the model's metadata (+ the selection)

``<stem>`` is ``sub-SS`` plus ``_roi-R`` for an ROI or ``_sel-<hash>`` for other selections.
Response files carry a ``.partial`` suffix until the whole run is complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import catalog, interrupts, selection as selections
from .api import NEST
from .bundle import Bundle, nested_value, sha256_file, write_nested_npz
from .errors import InvalidParameterError, OutputWriteError, RunStateError, StimulusError
from .image_files import ARRAY_SUFFIXES, ImageList, find_image_files, load_image, open_image_array, scan_images
from .images import MAX_PIXELS_VARIABLE, Stimulus, is_channels_last
from .models import EncodingModel, as_arrays, iter_responses
from .responses import file_stem, metadata_file, model_dir, responses_file
from .h5_copy import write_h5
from .paths import confined
from .run_files import (LOCK, PARTIAL, PROGRESS, RUN_FORMAT, RUN_RECORD, TEMPORARY, NpyRows, create_new_file,
                        iter_npy_blocks, locked, npy_header, read_progress, read_run_record, shard_chunks,
                        write_failure, write_json_atomically)

DEFAULT_CHUNK_SIZE = 256
# A chunk is the unit that is redone after an interruption; larger than any image list needs.
MAX_CHUNK_SIZE = 1_000_000
# onnxruntime threads per session. Beyond the cores of the largest machines, a typo (--threads 3000
# started 3000 OS threads per graph, for minutes); above this machine's cores only a warning.
MAX_THREADS = 1024


# -- what to encode ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelRequest:
    model_id: str
    subject: Any
    selection: dict
    variant: dict = field(default_factory=dict)  # {'train_split': 'split1'} or {'train_splits': 'single'}


def parse_model_spec(spec: str, bundle: Bundle) -> list[ModelRequest]:
    """``MODEL[:key=v1,v2...]...`` -> one request per subject, ROI and variant.

    MODEL is a model id or a short name (fwrf, eeg, fsaverage, meg, things_fmri, tvsd). Keys:
    ``subjects`` (ids, ranges such as ``1-4``, or ``all``: every exported subject, the default);
    ``roi`` (ROIs, one output each; ``A+B`` is one output of both; fwRF: ``all`` = every
    exported ROI); the model's list selections (``channels``, ``region``, ``sensors``: one
    output of all the names given); its masks given as indices and inclusive ranges
    (``timepoints=0-69``, ``electrodes=0-99``); and ``train_split`` (one output per split named)
    or ``train_splits=single`` for MEG.
    """
    name, *fields = spec.split(":")
    model_id = catalog.canonical_id(name)
    entry = catalog.model_entry(model_id)
    options: dict[str, list[str]] = {}
    for item in fields:
        key, equals, value = item.partition("=")
        if not equals or not value:
            raise InvalidParameterError(f"--model {spec!r}: expected key=value after ':', got {item!r}")
        if key in options:
            raise InvalidParameterError(f"--model {spec!r}: {key} is given twice")
        options[key] = value.split(",")
    variant_keys = set()
    if entry.get("variants"):
        variant_keys = {entry["variants"]["parameter"], entry["variants"]["stacked"]["parameter"]}
    allowed = {"subjects"} | selections.allowed_keys(model_id) | variant_keys
    unknown = set(options) - allowed
    if unknown:
        raise InvalidParameterError(f"--model {spec!r}: unknown keys {sorted(unknown)}; "
                                    f"{model_id} takes {sorted(allowed)}")
    exported = [catalog.subject_key(model_id, s) for s in bundle.manifest.get("models", {}).get(model_id, {})
                .get("graphs", {})]
    if not exported:
        raise InvalidParameterError(f"--model {spec!r}: the bundle has no {model_id} models")
    subjects = _subjects(spec, options.get("subjects", ["all"]), model_id, exported)
    base: dict[str, Any] = {}
    specs = entry.get("selection", {})
    for key, values in options.items():
        if key in specs and key != "roi":
            base[key] = (_index_mask(spec, key, values, _axis_size(entry, specs[key]))
                         if specs[key]["kind"] == "mask" else values)
    variants = [{key: value} for key in sorted(variant_keys & set(options)) for value in options[key]] or [{}]
    requests = []
    for subject in subjects:
        rois = options.get("roi")
        if rois == ["all"]:
            rois = (sorted(bundle.manifest["models"][model_id]["graphs"][str(subject)])
                    if model_id == selections.FWRF else catalog.rois(model_id))
        if model_id == selections.FWRF and rois is None:
            raise InvalidParameterError(f"--model {spec!r}: {model_id} needs roi=NAME[,NAME...] or roi=all")
        for roi in rois or [None]:
            roi_value = None if roi is None else (roi if model_id == selections.FWRF or "+" not in roi
                                                  else roi.split("+"))
            for variant in variants:
                requests.append(ModelRequest(model_id, subject, {**base, **({"roi": roi_value} if roi else {})},
                                             variant))
    return requests


def _subjects(spec: str, values: list[str], model_id: str, exported: list) -> list:
    if values == ["all"]:
        return exported
    expanded = []
    for value in values:  # numbered subjects also as ranges: 1-4
        low, dash, high = value.partition("-")
        expanded += _subject_range(spec, value, model_id) if dash and low.isdigit() and high.isdigit() else [value]
    try:
        return [catalog.subject_key(model_id, value) for value in expanded]
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"--model {spec!r}: subjects must be {catalog.subjects(model_id)} or 'all', "
                                    f"got {values}") from exc


def _subject_range(spec: str, value: str, model_id: str) -> list[str]:
    """'1-4' -> ['1', '2', '3', '4'], its size checked against the model's subjects before it is
    expanded (subjects=1-40000000 would otherwise fill gigabytes before its error)."""
    low, _, high = value.partition("-")
    known = catalog.subjects(model_id)
    try:
        first, last = int(low), int(high)
    except ValueError:  # more digits than Python converts
        first, last = 1, 0
    if not first <= last < first + len(known):
        raise InvalidParameterError(f"--model {spec!r}: subjects {value} is not a range within {model_id}'s "
                                    f"subjects {known}")
    return [str(n) for n in range(first, last + 1)]


def _axis_size(entry: dict, key_spec: dict) -> int:
    return next(axis["size"] for output in entry["outputs"] for axis in output["axes"]
                if axis["name"] == key_spec["axis"] and key_spec.get("output", output["name"]) == output["name"])


def _index_mask(spec: str, key: str, values: list[str], count: int) -> list[int]:
    """Indices and inclusive ranges ('0-69') -> a 0/1 mask of ``count`` values."""
    mask = [0] * count
    for value in values:
        low, _, high = value.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise InvalidParameterError(f"--model {spec!r}: {key} are indices or ranges like 0-69, "
                                        f"got {value!r}") from None
        if not 0 <= first <= last < count:
            raise InvalidParameterError(f"--model {spec!r}: {key} {value!r} outside 0-{count - 1}")
        mask[first:last + 1] = [1] * (last + 1 - first)
    return mask


@dataclass
class Output:
    """The files of one (model, subject, selection)."""

    request: ModelRequest
    model: EncodingModel
    name: str
    folder: str
    stem: str
    shapes: dict[str, tuple]  # array name -> shape per image
    axes: dict[str, Any]
    metadata: dict[str, Any]

    def array_file(self, array: str) -> str:
        return f"{self.folder}/" + responses_file(self.stem, ".npy" if array == "responses" else f"_{array}.npy")

    @property
    def metadata_file(self) -> str:
        return f"{self.folder}/" + metadata_file(self.stem, ".npz")

    @property
    def h5_file(self) -> str:
        return f"{self.folder}/" + responses_file(self.stem, ".h5")


def planned_outputs(nest: NEST, model_specs: list[str], imageset: str, device: str) -> list[Output]:
    """The outputs of ``--model`` specs, their models loaded: what a run encodes, here or in each
    of its Ray workers (and what nest_rt.ray.Encoder gives as columns)."""
    requests = [request for spec in model_specs for request in parse_model_spec(spec, nest.bundle)]
    if not requests:
        raise InvalidParameterError("--model: give at least one model")
    return plan_outputs(nest, requests, imageset, device)


def plan_outputs(nest: NEST, requests: list[ModelRequest], imageset: str, device: str) -> list[Output]:
    outputs = []
    for request in requests:
        model = nest.get_encoding_model(request.model_id, subject=request.subject,
                                        selection=request.selection or None, device=device, **request.variant)
        roi = request.selection.get("roi")
        stem = file_stem(request.subject, roi if isinstance(roi, str) or roi is None else "+".join(roi))
        stem += "".join(f"_{key.replace('_', '-')}-{value}" for key, value in request.variant.items())
        other = {key: value for key, value in request.selection.items() if key != "roi"}
        if other:
            stem += "_sel-" + hashlib.sha256(json.dumps(other, sort_keys=True).encode()).hexdigest()[:8]
        empty = model.allocate(0)
        shapes = ({plan.name: array.shape[1:] for plan, array in zip(model.plans, empty)} if isinstance(empty, tuple)
                  else {"responses": empty.shape[1:]})
        metadata = model.metadata()
        axes, chosen = _axes(request, model, shapes, metadata)
        name = f"{request.model_id}_{stem}"
        if any(output.name == name for output in outputs):
            raise InvalidParameterError(f"--model: {name} is asked for twice")
        outputs.append(Output(request, model, name, f"{model_dir(request.model_id)}/imageset-{imageset}",
                              stem, shapes, axes, {**metadata, "selection": chosen}))
    return outputs


def _axes(request: ModelRequest, model: EncodingModel, shapes: dict, metadata: dict) -> tuple[dict, dict]:
    """Labels of the output axes for the run record (an axis the manifest gives labels for, such
    as EEG channels or times, lists the kept labels; others their count), and the selected
    indices (as the model chose them when it was loaded) for the metadata."""
    if not catalog.is_linear(request.model_id):
        return {"voxels": int(shapes["responses"][0])}, {"roi": np.array(request.selection["roi"])}
    described = {}
    for plan in model.plans:
        axes: dict[str, Any] = {}
        if getattr(model, "axis_name", None):
            axes[model.axis_name] = len(model.parts)
        if plan.block_axis:
            axes[plan.block_axis] = len(plan.blocks)
        for axis in plan.axes:
            kept = plan.indices[axis["name"]]
            labels = _labels(metadata, axis.get("labels"))
            axes[axis["name"]] = (np.asarray(labels)[kept].tolist() if labels is not None else len(kept))
        described[plan.name] = axes
    if len(model.plans) == 1:
        return described[model.plans[0].name], model.plans[0].indices
    return described, model.selected_indices


def _labels(metadata: dict, path: str | None):
    values = nested_value(metadata, path)
    if values is None:
        return None
    values = np.asarray(values)
    return values.round(6) if values.dtype.kind == "f" else values.astype(str)


# -- the images of a run -----------------------------------------------------------------------
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


def versions() -> dict[str, str]:
    import onnxruntime

    from . import __version__
    return {"nest_rt": __version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


# -- the run -----------------------------------------------------------------------------------
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
                _encode_chunks(inputs, outputs, files, todo, done, failed, start, out, device, show_progress,
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
    backbones = sorted({catalog.model_entry(m)["backbone"] for m in model_ids if catalog.is_linear(m)})
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


def _encode_chunks(inputs: RunInputs, outputs: list[Output], files: list[dict[str, NpyRows]], todo,
                   done: set[int], failed: list[dict], first_row: int, out: Path, device: str,
                   show_progress: bool, total_rows: int, log, workers=None) -> None:
    """Encode the chunks ``todo`` (here, or by Ray ``workers``: see nest_rt.ray) and write each
    block of rows as it comes; a chunk is recorded in progress.json once all its rows are on disk,
    with the images that failed to decode in it (their rows are NaN). Blocks of different chunks
    may arrive interleaved and chunks finish in any order: rows have fixed places, and a chunk
    redone after a lost worker writes the same bytes again."""
    from tqdm.auto import tqdm
    with tqdm(total=total_rows, initial=total_rows - sum(stop - start for _, start, stop in todo),
              unit="img", desc="encoding", disable=not show_progress, smoothing=0.1) as bar:
        models = [output.model for output in outputs]
        items = (workers.encode_chunks(todo, bar) if workers is not None
                 else (item for chunk, start, stop in todo
                       for item in chunk_items(inputs, models, chunk, start, stop, device, bar.update)))
        with contextlib.closing(items):  # an error here (a full disk) stops Ray's workers at once
            _write_items(items, outputs, files, done, failed, first_row, out, log)


def _write_items(items, outputs: list[Output], files: list[dict[str, NpyRows]], done: set[int], failed: list[dict],
                 first_row: int, out: Path, log) -> None:
    """Write each block into its rows; record each chunk once its ChunkDone comes."""
    for item in items:
        if isinstance(item, ChunkDone):
            _record_chunk(item, files, done, failed, first_row, out, log)
        else:
            index, rows, arrays = item
            for array, values in zip(outputs[index].shapes, arrays):
                _write_rows(files[index][array], rows - first_row, values)
        interrupts.raise_if_stopped()


def _record_chunk(item: ChunkDone, files: list[dict[str, NpyRows]], done: set[int], failed: list[dict],
                  first_row: int, out: Path, log) -> None:
    """A chunk's rows are all written: NaN rows for its images that failed, then the files synced
    and the chunk recorded as done."""
    for failure in item.failed:  # no silent responses to an image that was never seen
        for per_output in files:
            for handle in per_output.values():
                handle.write(failure["row"] - first_row, np.full((1, *handle.shape[1:]), np.nan, np.float32))
        log(f"left out: {failure['path']}: {failure['reason']}; its row {failure['row']} holds NaN")
    for per_output in files:
        for handle in per_output.values():
            handle.sync()
    done.add(item.chunk)
    failed.extend(item.failed)
    write_json_atomically(out / PROGRESS, progress_record(done, failed))


def progress_record(done, failed: list[dict]) -> dict[str, Any]:
    """progress.json: the same bytes however the chunks were run (in any order, sharded and merged)."""
    return {"chunks_done": sorted(done), "failed": sorted(failed, key=lambda failure: failure["row"])}


@dataclass
class ChunkDone:
    """The last item of a chunk's stream: every block of it came before, and these images of
    it (as {row, path, reason}) failed to decode."""
    chunk: int
    failed: list[dict]


def chunk_items(inputs: RunInputs, models: list[EncodingModel], chunk: int, start: int, stop: int, device: str,
                on_batch=None):
    """Images start:stop encoded: yields (model index, rows of the run, arrays) blocks, then a
    ChunkDone. The same batches wherever the chunk runs (here or in a Ray worker), so the same
    bytes."""
    failed: list[dict] = []
    stimulus, order = inputs.stimulus(start, stop, failed)

    def name_images(positions: np.ndarray) -> str:  # the stimulus is sorted by image size: its rows say
        rows = (order[positions] + start).tolist()
        if inputs.images is None:
            return f"rows {rows} of {inputs.array_info['path']}"
        return f"row{'s' * (len(rows) > 1)} " + ", ".join(f"{row} ({inputs.images.paths[row]})" for row in rows)
    for index, block_start, block_stop, block in iter_responses(models, stimulus, device, on_batch=on_batch,
                                                                name_images=name_images):
        yield index, order[block_start:block_stop] + start, as_arrays(block)
    yield ChunkDone(chunk, failed)


def _write_rows(handle: NpyRows, rows: np.ndarray, values: np.ndarray) -> None:
    """Write values to possibly scattered rows, one contiguous run at a time."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for run_start, run_stop in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):
        handle.write(int(rows[run_start]), values[run_start:run_stop])


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


# -- merging shards ------------------------------------------------------------------------------
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
