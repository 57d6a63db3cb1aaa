"""The names of response files, one place for the writers (``nest-rt encode``, the HDF5 copy,
the exporters of pregenerated responses) and the readers (nest_rt.responses, nest-rt plot through
run.json). The layout is upstream's pregenerated one::

    ROOT/modality-M/train_dataset-D/model-X/imageset-I/
        synthetic_neural_responses_<stem>.h5            dataset 'synthetic_neural_responses'
                                                        (fsaverage: datasets 'lh' and 'rh')
        synthetic_neural_responses_<stem>.npy           nest-rt encode only (fsaverage: _lh/_rh.npy)
        synthetic_neural_responses_metadata_<stem>.npz  pickle-free metadata (bundle or encode output)
        synthetic_neural_responses_metadata_<stem>.npy  upstream's pickled metadata: never read here

where ``<stem>`` is ``sub-SS`` plus ``_roi-R`` for an ROI (``output_stem`` adds a run's variants
and other selections).
"""
from __future__ import annotations

import hashlib
import json

from . import catalog

PREGENERATED_DIR = "pregenerated_insilico_neural_responses"
DATASET = "synthetic_neural_responses"
SINGLE_ARRAY = "responses"  # the array name of a model with one output array
UPSTREAM_IMAGESETS = ["nsd", "imagenet_val", "things"]  # the image sets upstream pregenerated responses of


def folder_triple(model_id: str) -> tuple[str, str, str]:
    """(modality, train_dataset, model) naming a model's response folders: its legacy triple
    where it has one, else the parts of its id (upstream's toolkit folder names)."""
    legacy = catalog.model_entry(model_id).legacy
    return tuple(legacy) if legacy else catalog.id_parts(model_id)


def model_dir(model_id: str) -> str:
    modality, train_dataset, model = folder_triple(model_id)
    return f"modality-{modality}/train_dataset-{train_dataset}/model-{model}"


def imageset_dir(model_id: str, imageset: str) -> str:
    return f"{model_dir(model_id)}/imageset-{imageset}"


def file_stem(subject: int | str, roi: str | None = None) -> str:
    return f"sub-{catalog.subject_label(subject)}" + (f"_roi-{roi}" if roi else "")


def output_stem(subject: int | str, selection: dict, variant: dict) -> str:
    """The stem of an encode run's output: ``file_stem``, then its variant (``_train-split-split1``)
    and a hash of its selections other than the ROI (``_sel-<hash>``)."""
    roi = selection.get("roi")
    stem = file_stem(subject, roi if isinstance(roi, str) or roi is None else "+".join(roi))
    stem += "".join(f"_{key.replace('_', '-')}-{value}" for key, value in variant.items())
    other = {key: value for key, value in selection.items() if key != "roi"}
    if other:
        stem += "_sel-" + hashlib.sha256(json.dumps(other, sort_keys=True).encode()).hexdigest()[:8]
    return stem


def responses_file(stem: str, suffix: str) -> str:
    return f"{DATASET}_{stem}{suffix}"


def npy_suffix(array: str) -> str:
    """The suffix of one array's .npy file: none for a single array, ``_lh`` / ``_rh`` for fsaverage's."""
    return ".npy" if array == SINGLE_ARRAY else f"_{array}.npy"


def h5_dataset(array: str) -> str:
    """The HDF5 dataset of one array: upstream's ``synthetic_neural_responses``, or ``lh`` / ``rh``."""
    return DATASET if array == SINGLE_ARRAY else array


def metadata_file(stem: str, suffix: str) -> str:
    return f"{DATASET}_metadata_{stem}{suffix}"
