"""Read in silico responses stored on disk: upstream's pregenerated ones (legacy toolkit) and
those written by ``nest-rt encode``, which use the same directory layout (its file names: see
response_files). The runtime never unpickles, so upstream's metadata is read only after
``nest-rt export --pregenerated`` converted it to npz.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from . import catalog
from .bundle import Bundle, read_nested_npz
from .errors import (BundleIntegrityError, InvalidParameterError, MissingExtraError,
                     NESTError, ParameterTypeError, ResponsesNotFoundError, RunStateError)
from .response_files import (DATASET, PREGENERATED_DIR, SINGLE_ARRAY, UPSTREAM_IMAGESETS, file_stem, h5_dataset,
                             imageset_dir, metadata_file, model_dir, npy_suffix, responses_file)
from .run_files import RUN_RECORD, read_run_record


class Request(NamedTuple):
    model_id: str
    imageset: str
    stem: str
    return_metadata: bool

    @property
    def directory(self) -> str:
        return imageset_dir(self.model_id, self.imageset)


def parse_request(modality: Any, train_dataset: Any, model: Any, imageset: Any, subject: Any,
                  roi: Any = None, return_metadata: Any = True) -> Request:
    """Validate the arguments in upstream's order; the imageset is checked against the disk later."""
    for name, value in (("modality", modality), ("train_dataset", train_dataset), ("model", model)):
        catalog.require_str(name, value)
    # upstream pregenerated responses of the legacy models only; nest-rt encode writes those of
    # the others under their own ids' parts
    encode_only = f"{modality}-{train_dataset}-{model}"
    model_id = (encode_only if encode_only in catalog.models() and not catalog.model_entry(encode_only).legacy
                else catalog.model_id_for_legacy(modality, train_dataset, model))
    catalog.require_str("imageset", imageset)
    if imageset in ("", ".", "..") or Path(imageset).name != imageset:
        raise InvalidParameterError(f"imageset must be a plain folder name such as {UPSTREAM_IMAGESETS}, "
                                    f"got {imageset!r}")
    subject = catalog.validate_subject(model_id, subject)
    if not catalog.is_linear(model_id) or (catalog.rois(model_id) and roi is not None):
        roi = catalog.validate_roi(model_id, roi)  # the fwRF's files are per ROI
    elif not catalog.rois(model_id):
        roi = None  # upstream ignores roi for EEG
    if not isinstance(return_metadata, bool):
        raise ParameterTypeError(f"return_metadata must be a bool, got {type(return_metadata).__name__}")
    return Request(model_id, imageset, file_stem(subject, roi), return_metadata)


def response_roots(responses_dir: Any) -> list[Path]:
    """Folders that hold ``modality-*`` folders: each given folder itself, or its
    ``pregenerated_insilico_neural_responses`` subfolder (a legacy toolkit or a bundle)."""
    given = [responses_dir] if isinstance(responses_dir, (str, Path)) else responses_dir
    if not isinstance(given, (list, tuple)) or not given or \
            not all(isinstance(p, (str, Path)) for p in given):
        raise ParameterTypeError("responses_dir must be a str or Path (or a list of them), "
                                 f"got {type(responses_dir).__name__}")
    roots = []
    for folder in map(Path, given):
        if not folder.is_dir():
            raise ResponsesNotFoundError(f"responses_dir {str(folder)!r} is not a directory")
        _require_finished_run(folder)
        roots.append(folder / PREGENERATED_DIR if (folder / PREGENERATED_DIR).is_dir() else folder)
    return roots


def _require_finished_run(folder: Path) -> None:
    """An encode output folder is read only once its run is complete."""
    if (folder / RUN_RECORD).is_file():
        status = read_run_record(folder, f"responses_dir {str(folder)!r}", complete=False)["status"]
        if status != "complete":
            raise RunStateError(f"responses_dir {str(folder)!r} holds an unfinished nest-rt encode run "
                                f"(status {status!r}); run its encode command again to finish it")


def find_responses(roots: Sequence[Path], request: Request) -> Path:
    """The first root's .h5 (upstream's format, preferred) or .npy of the request."""
    _check_imageset(roots, request)
    arrays = catalog.array_names(request.model_id)
    suffixes = [".h5", npy_suffix(arrays[0] if arrays else SINGLE_ARRAY)]
    for root in roots:
        for suffix in suffixes:
            path = root / request.directory / responses_file(request.stem, suffix)
            if path.is_file():
                return path
    present = sorted({p.name for root in roots for p in (root / request.directory).glob(f"{DATASET}_sub-*")})
    raise ResponsesNotFoundError(
        f"no responses {responses_file(request.stem, '.h5 / .npy')} in imageset {request.imageset!r} "
        f"of {_folders(roots, request.directory)}; files there: {present}")


def find_metadata(roots: Sequence[Path], request: Request) -> Path:
    """The pickle-free .npz metadata of the request, from whichever root has it."""
    candidates = [root / request.directory / metadata_file(request.stem, ".npz") for root in roots]
    for path in candidates:
        if path.is_file():
            return path
    pickled = [root / request.directory / metadata_file(request.stem, ".npy") for root in roots]
    pickled = [path for path in pickled if path.is_file()]
    if pickled:
        toolkit = _toolkit_of(pickled[0])
        raise ResponsesNotFoundError(
            f"the metadata of these responses exists only as upstream's pickled {pickled[0]}, which "
            f"nest_rt never unpickles; convert it once with: nest-rt export --nest-dir {toolkit} "
            "--out BUNDLE --pregenerated, then read through NEST(BUNDLE) (or pass return_metadata=False)")
    raise ResponsesNotFoundError(f"no metadata {metadata_file(request.stem, '.npz')} in "
                                 f"{_folders(roots, request.directory)}; pass return_metadata=False")


def open_responses(path: Path, request: Request):
    """Lazy responses: an h5py Dataset (the file stays open, as upstream) or a read-only
    memory-mapped array; a model of several arrays gives a tuple (fsaverage: (lh, rh))."""
    arrays = catalog.array_names(request.model_id)
    if path.suffix == ".h5":
        datasets = _open_h5(path, [h5_dataset(name) for name in arrays or [SINGLE_ARRAY]])
        return tuple(datasets) if arrays else datasets[0]
    if arrays:
        return tuple(_open_npy(path.with_name(responses_file(request.stem, npy_suffix(name)))) for name in arrays)
    return _open_npy(path)


def read_metadata(path: Path, bundle: Bundle | None = None) -> dict[str, Any]:
    """Read an npz without unpickling; through ``bundle`` (sha256-checked) when it lists the file."""
    try:
        if bundle is not None and path.resolve().is_relative_to(bundle.root.resolve()):
            relative = path.resolve().relative_to(bundle.root.resolve()).as_posix()
            if relative in bundle.manifest.get("files", {}):
                return bundle.read_nested_npz(relative)
        return read_nested_npz(path)
    except NESTError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise BundleIntegrityError(f"metadata {path} is not a pickle-free npz ({_first_line(exc)})") from exc


def load_insilico_neural_responses(responses_dir: str | Path | Sequence[str | Path], modality: str,
                                   train_dataset: str, model: str, imageset: str, subject: int,
                                   roi: str | None = None, return_metadata: bool = True, *,
                                   bundle: Bundle | None = None):
    """Upstream's ``load_insilico_neural_responses`` over explicit folders.

    ``responses_dir``: a ``nest-rt encode`` OUT folder, a legacy toolkit, a bundle, or a list of
    them (searched in order; responses and metadata may come from different ones). Returns the
    lazy responses (h5py Dataset, or memory-mapped array for encode outputs without --h5;
    fsaverage: (lh, rh)), and with ``return_metadata`` the metadata dict. Metadata inside
    ``bundle`` is checked against the bundle's sha256 list.
    """
    request = parse_request(modality, train_dataset, model, imageset, subject, roi, return_metadata)
    return load_request(response_roots(responses_dir), request, bundle)


def load_request(roots: Sequence[Path], request: Request, bundle: Bundle | None = None):
    responses_path = find_responses(roots, request)
    # find the metadata before opening the h5, so that a refusal leaves no file open
    metadata_path = find_metadata(roots, request) if request.return_metadata else None
    responses = open_responses(responses_path, request)
    if metadata_path is None:
        return responses
    return responses, read_metadata(metadata_path, bundle)


def _check_imageset(roots: Sequence[Path], request: Request) -> None:
    if any((root / request.directory).is_dir() for root in roots):
        return
    available = sorted({p.name.removeprefix("imageset-") for root in roots
                        for p in (root / model_dir(request.model_id)).glob("imageset-*") if p.is_dir()})
    raise ResponsesNotFoundError(
        f"imageset={request.imageset!r}: no such image set for {model_dir(request.model_id)} in "
        f"{[str(r) for r in roots]}; available imagesets: {available}")


def _open_h5(path: Path, names: list[str]) -> list:
    try:
        import h5py
    except ImportError as exc:
        raise MissingExtraError(f"reading {path.name} needs h5py: pip install 'nest-rt[h5]'") from exc
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise BundleIntegrityError(f"{path} is not a readable HDF5 file ({_first_line(exc)})") from exc
    missing = [name for name in names if name not in handle]
    if missing:
        listed = list(handle)
        handle.close()
        raise BundleIntegrityError(f"{path} has no dataset {missing[0]!r}; it holds {listed}")
    return [handle[name] for name in names]


def _open_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ResponsesNotFoundError(f"responses file missing: {path}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise BundleIntegrityError(f"{path} is not a plain numeric .npy ({_first_line(exc)})") from exc


def _toolkit_of(path: Path) -> str:
    """The toolkit folder above a pregenerated file (for the conversion hint)."""
    for parent in path.parents:
        if parent.name == PREGENERATED_DIR:
            return str(parent.parent)
    return "TOOLKIT"


def _folders(roots: Sequence[Path], directory: str) -> list[str]:
    return [str(root / directory) for root in roots]


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
