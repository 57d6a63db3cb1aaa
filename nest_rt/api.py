"""The ``NEST`` class: upstream's legacy API over an exported bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import catalog
from .bundle import Bundle
from .errors import InvalidParameterError, NotExportedError, ParameterTypeError
from .models import FwrfEncodingModel

_LOADERS = {"fmri-nsd-fwrf": FwrfEncodingModel}


class NEST:
    """Encode images with NEST models exported by ``nest-rt export``.

    ``NEST(bundle_dir)`` takes the exported bundle directory where upstream took the toolkit
    directory; every other method keeps upstream's names, arguments, defaults and shapes.
    ``num_threads`` sets onnxruntime's intra-op threads (default: onnxruntime's choice).
    """

    def __init__(self, bundle_dir: str | Path, num_threads: int | None = None):
        if not isinstance(bundle_dir, (str, Path)):
            raise ParameterTypeError(f"bundle_dir must be a str or Path, got {type(bundle_dir).__name__}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise InvalidParameterError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
        self.bundle = Bundle(bundle_dir)
        self.num_threads = num_threads

    # -- catalog queries (upstream's which_* methods) --------------------------------------
    def which_modalities(self) -> list[str]:
        return catalog.legacy_modalities()

    def which_train_datasets(self, modality: str) -> list[str]:
        return catalog.legacy_train_datasets(modality)

    def which_models(self, modality: str, train_dataset: str) -> list[str]:
        return catalog.legacy_models(modality, train_dataset)

    def which_subjects(self, modality: str, train_dataset: str) -> list[int]:
        model_id = catalog.model_id_for_legacy(
            modality, train_dataset, self.which_models(modality, train_dataset)[0])
        return catalog.subjects(model_id)

    def which_rois(self, train_dataset: str) -> list[str]:
        catalog.require_str("train_dataset", train_dataset)
        catalog.require_choice("train_dataset", train_dataset, catalog.legacy_train_datasets("fmri"))
        model_id = catalog.model_id_for_legacy(
            "fmri", train_dataset, catalog.legacy_models("fmri", train_dataset)[0])
        return catalog.rois(model_id)

    # -- models ------------------------------------------------------------------------------
    def get_encoding_model(self, modality: str, train_dataset: str, model: str, subject: int,
                           roi: str | None = None, device: str = "auto"):
        model_id, subject, roi = self._resolve(modality, train_dataset, model, subject, roi)
        loader = _LOADERS.get(model_id)
        if loader is None:
            raise NotExportedError(f"{model_id} is not supported by this nest_rt version yet")
        return loader(self.bundle, subject, roi, device, self.num_threads)

    def encode(self, encoding_model, images: Any, return_metadata: bool = True,
               device: str = "auto", show_progress: bool = True):
        """In silico responses ``[N, voxels]`` (fMRI), optionally with the model's metadata."""
        for name, flag in (("return_metadata", return_metadata), ("show_progress", show_progress)):
            if not isinstance(flag, bool):
                raise ParameterTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if not isinstance(encoding_model, tuple(_LOADERS.values())):
            raise ParameterTypeError("encoding_model must be the object returned by "
                                     f"get_encoding_model, got {type(encoding_model).__name__}")
        # Metadata first: a damaged bundle fails before minutes of encoding, not after.
        metadata = encoding_model.metadata() if return_metadata else None
        responses = encoding_model.encode(images, device=device, show_progress=show_progress)
        return (responses, metadata) if return_metadata else responses

    def get_metadata(self, modality: str, train_dataset: str, model: str, subject: int,
                     roi: str | None = None) -> dict[str, Any]:
        model_id, subject, roi = self._resolve(modality, train_dataset, model, subject, roi)
        return self.bundle.read_nested_npz(self.bundle.entry(model_id, subject, roi)["metadata"])

    def _resolve(self, modality, train_dataset, model, subject, roi):
        catalog.require_str("modality", modality)
        model_id = catalog.model_id_for_legacy(modality, train_dataset, model)
        subject = catalog.validate_subject(model_id, subject)
        # upstream requires roi for fMRI and ignores it for EEG
        roi = catalog.validate_roi(model_id, roi) if catalog.rois(model_id) else None
        return model_id, subject, roi
