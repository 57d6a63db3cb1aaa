"""The ``NEST`` class: upstream's legacy API and its current model-ID API, over an exported bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import catalog, responses, selection as selections
from .bundle import Bundle
from .errors import (InvalidParameterError, ParameterTypeError, ResponsesNotFoundError, StimulusError,
                     ValidationError)
from .images import Stimulus
from .models import EncodingModel, FwrfEncodingModel, VitBackbone, VitEncodingModel, VitHead, encode_models

FWRF, EEG, FSAVERAGE = selections.FWRF, selections.EEG, selections.FSAVERAGE


class NEST:
    """Encode images with NEST models exported by ``nest-rt export``.

    ``NEST(bundle_dir)`` takes the exported bundle directory where upstream took the toolkit
    directory. Both upstream APIs are offered with their names, arguments and defaults:

    - legacy: ``get_encoding_model(modality, train_dataset, model, subject, roi=None, device='auto')``,
      ``encode(model, images, return_metadata=True)``, ``get_metadata(...)``, ``which_*()``;
    - current: ``get_encoding_model(model_id, subject=..., selection=..., device='auto')``,
      ``encode(model, stimulus, return_metadata=False)``, ``list_models()``,
      ``get_model_catalog()``, ``get_model_metadata(model_id, ...)``, ``describe(model_id)``.

    ``num_threads`` sets onnxruntime's intra-op threads (default: onnxruntime's choice).
    ``precision`` selects the ViT backbone: 'fp32' (default), 'int8' (dynamic quantisation, for
    the CPU) or 'fp16' (CUDA only), the last two if the bundle was exported with
    ``--precisions``; their fidelity against fp32, measured at export, is in ``bundle.json``.
    """

    def __init__(self, bundle_dir: str | Path | Bundle, num_threads: int | None = None, precision: str = "fp32"):
        if not isinstance(bundle_dir, (str, Path, Bundle)):
            raise ParameterTypeError(f"bundle_dir must be a str or Path, got {type(bundle_dir).__name__}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                        or num_threads < 1):
            raise InvalidParameterError(f"num_threads must be None or an int >= 1, got {num_threads!r}")
        catalog.require_str("precision", precision)
        catalog.require_choice("precision", precision, ["fp32", "int8", "fp16"])
        # an open Bundle is shared as it is, with the files it has already verified
        self.bundle = bundle_dir if isinstance(bundle_dir, Bundle) else Bundle(bundle_dir)
        self.num_threads = num_threads
        self.precision = precision
        self._backbone: VitBackbone | None = None  # one per NEST object, shared by all ViT models
        self._heads: dict[tuple[str, int], VitHead] = {}  # one per subject, shared by its selections

    # -- catalog queries (legacy which_* methods) --------------------------------------------
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

    # -- catalog queries (current API) ----------------------------------------------------------
    def list_models(self) -> list[str]:
        return list(catalog.models())

    def get_model_catalog(self, print_format: bool = False) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for entry in catalog.models().values():
            found.setdefault(entry["catalog_modality"], []).append(entry["catalog_dataset"])
        result = {modality: sorted(datasets) for modality, datasets in found.items()}
        if print_format:
            for modality, datasets in result.items():
                print(f"{modality}:\n" + "".join(f"  - {name}\n" for name in datasets), end="")
        return result

    def describe(self, model_id: str) -> dict[str, Any]:
        """A model card: what the model is, its inputs, outputs, parameters and what is exported."""
        entry = catalog.model_entry(model_id)
        exported = sorted(int(s) for s in self.bundle.manifest.get("models", {}).get(model_id, {})
                          .get("graphs", {}))
        card = {
            "model_id": model_id,
            "model_info": {"modality": entry["modality"], "training_dataset": entry["catalog_dataset"],
                           "subjects": entry["subjects"], "exported_subjects": exported},
            "description": _DESCRIPTIONS[model_id],
            "input": {"stimulus": "uint8 (or integer 0..255) images [N, 3, S, S] or [N, S, S, 3], PIL "
                                  "images or image paths; square, any size S"},
            "output": _OUTPUTS[model_id],
            "parameters": {"subject": entry["subjects"], "selection": sorted(selections.ALLOWED_KEYS[model_id]),
                           "device": ["auto", "cpu", "cuda"]},
            "parameters_by_function": {
                "get_encoding_model": ["model_id", "subject", "selection", "device"],
                "encode": ["model", "stimulus", "return_metadata", "show_progress", "center_crop"]},
            "performance": {"parity_at_export": {  # subject -> ROI (or 'all') -> figures
                subject: {key: graph["parity"] for key, graph in graphs.items()}
                for subject, graphs in self.bundle.manifest["models"].get(model_id, {}).get("graphs", {}).items()}},
            "example_usage": _EXAMPLES[model_id],
        }
        print(f"{model_id}: {card['description']}\n  output: {card['output']}\n"
              f"  exported subjects: {exported or 'none'}")
        return card

    # -- models ----------------------------------------------------------------------------------
    def get_encoding_model(self, *args, **kwargs) -> EncodingModel:
        """Legacy ``(modality, train_dataset, model, subject, roi=None, device='auto')`` or
        current ``(model_id, subject=..., selection=None, device='auto')``, told apart by whether
        the first argument is a model id."""
        first = args[0] if args else kwargs.get("modality", kwargs.get("model_id"))
        if "modality" in kwargs or first in catalog.legacy_modalities():
            return self._legacy_model(*args, **kwargs)
        return self._model_by_id(*args, **kwargs)

    def _legacy_model(self, modality: str, train_dataset: str, model: str, subject: int,
                      roi: str | None = None, device: str = "auto") -> EncodingModel:
        model_id, subject, roi = self._resolve(modality, train_dataset, model, subject, roi)
        return self._load(model_id, subject, device, "legacy", roi=roi)

    def _model_by_id(self, model_id: str, device: str = "auto", selection: dict | None = None,
                     subject: int | None = None) -> EncodingModel:
        catalog.model_entry(model_id)
        if subject is None:
            raise InvalidParameterError(f"subject is required for {model_id}; valid subjects: "
                                        f"{catalog.subjects(model_id)}")
        subject = catalog.validate_subject(model_id, subject)
        return self._load(model_id, subject, device, "current", selection=selection)

    def _load(self, model_id: str, subject: int, device: str, api: str, roi: str | None = None,
              selection: dict | None = None) -> EncodingModel:
        if model_id == FWRF:
            roi = roi or selections.fwrf_roi(selection)
            return FwrfEncodingModel(self.bundle, subject, roi, device, self.num_threads, api=api)
        self.bundle.entry(model_id, subject)  # a clear NotExportedError before anything else
        if model_id == EEG:
            columns, shape, indices = selections.eeg_plan(selection)
        else:
            columns, shape, indices = selections.fsaverage_plan(
                selection, lambda name: self.fsaverage_roi_vertices(subject, name))
        key = (model_id, subject)
        if key not in self._heads:
            self._heads[key] = VitHead(self.bundle, model_id, subject, self.num_threads)
        return VitEncodingModel(self.bundle, model_id, subject, columns, shape, self._vit_backbone(),
                                self._heads[key], device, api=api, selection=selection, selected_indices=indices)

    def release_heads(self) -> None:
        """Forget the cached ViT heads (each may hold its subject's folded PCA matrix, about
        460 MB); models loaded earlier keep theirs alive until they are dropped."""
        self._heads.clear()

    def _vit_backbone(self) -> VitBackbone:
        if self._backbone is None:
            self._backbone = VitBackbone(self.bundle, self.num_threads, self.precision)
        return self._backbone

    def fsaverage_roi_vertices(self, subject: int, name: str) -> tuple[np.ndarray, np.ndarray]:
        """An ROI's (lh, rh) vertex indices from the subject's metadata; an ROI listed in one
        hemisphere only is empty in the other."""
        metadata = self.bundle.read_nested_npz(self.bundle.entry(FSAVERAGE, subject)["metadata"])["fmri"]
        hemispheres = [metadata.get(f"{side}_fsaverage_rois", {}) for side in ("lh", "rh")]
        candidates = [name, selections.FSAVERAGE_ROI_ALIASES.get(name)]
        key = next((c for c in candidates if c and any(c in rois for rois in hemispheres)), None)
        if key is None:
            listed = sorted({roi for rois in hemispheres for roi in rois})
            raise ValidationError(f"selection['roi']={name!r}: subject {subject}'s metadata has no such ROI; "
                                  f"it lists {listed}")
        lh, rh = (np.asarray(rois.get(key, []), dtype=np.int64) for rois in hemispheres)
        return lh, rh

    # -- encoding ----------------------------------------------------------------------------------
    def encode(self, encoding_model: EncodingModel | None = None, images: Any = None,
               return_metadata: bool | None = None, device: str = "auto", show_progress: bool = True, *,
               stimulus: Any = None, model: EncodingModel | None = None, center_crop: bool = False):
        """In silico responses, optionally with the model's metadata.

        fMRI fwRF: [N, voxels]; EEG: [N, 4, channels, times]; fsaverage: (lh [N, Vl], rh [N, Vr]),
        all float32. ``return_metadata`` defaults to True for models loaded through the legacy
        call and False for the model-ID call, as upstream. The legacy names (``encoding_model``,
        ``images``) and the current ones (``model``, ``stimulus``) are both accepted. Images must
        be square unless ``center_crop`` (new) crops them to their central square.
        """
        if (encoding_model is None) == (model is None):
            raise ParameterTypeError("pass the model once, as encoding_model=... (legacy) or model=... (current)")
        encoding_model = encoding_model if model is None else model
        _check_model(encoding_model)
        if (images is None) == (stimulus is None):
            raise StimulusError("pass the images once, as images=... (legacy) or stimulus=... (current)")
        if return_metadata is None:
            return_metadata = encoding_model.api == "legacy"
        for name, flag in (("return_metadata", return_metadata), ("show_progress", show_progress)):
            if not isinstance(flag, bool):
                raise ParameterTypeError(f"{name} must be a bool, got {type(flag).__name__}")
        # Metadata first: a damaged bundle fails before minutes of encoding, not after.
        metadata = encoding_model.metadata() if return_metadata else None
        (responses,) = encode_models([encoding_model], Stimulus(images if stimulus is None else stimulus,
                                                                center_crop=center_crop),
                                     device=device, show_progress=show_progress)
        return (responses, metadata) if return_metadata else responses

    def encode_many(self, encoding_models: list[EncodingModel], images: Any, device: str = "auto",
                    show_progress: bool = True, center_crop: bool = False) -> list:
        """Responses of several models to the same images, in the models' order.

        Images are decoded once per batch and the ViT backbone runs once per batch for every EEG
        and fsaverage model: ten EEG subjects cost little more than one.
        """
        if not isinstance(encoding_models, (list, tuple)) or not encoding_models:
            raise ParameterTypeError("encoding_models must be a non-empty list of models from get_encoding_model")
        for model in encoding_models:
            _check_model(model)
        if not isinstance(show_progress, bool):
            raise ParameterTypeError(f"show_progress must be a bool, got {type(show_progress).__name__}")
        return encode_models(list(encoding_models), Stimulus(images, center_crop=center_crop), device=device,
                             show_progress=show_progress)

    # -- metadata ----------------------------------------------------------------------------------
    def get_metadata(self, modality: str, train_dataset: str, model: str, subject: int,
                     roi: str | None = None) -> dict[str, Any]:
        model_id, subject, roi = self._resolve(modality, train_dataset, model, subject, roi)
        return self.bundle.read_nested_npz(self.bundle.entry(model_id, subject, roi)["metadata"])

    def get_model_metadata(self, model_id: str, subject: int | None = None,
                           roi: str | None = None) -> dict[str, Any]:
        catalog.model_entry(model_id)
        if subject is None:
            raise InvalidParameterError(f"subject is required; valid subjects: {catalog.subjects(model_id)}")
        subject = catalog.validate_subject(model_id, subject)
        if model_id == FWRF:
            roi = catalog.validate_roi(model_id, roi)
        elif roi is not None:
            raise InvalidParameterError(f"roi applies to {FWRF} only; the metadata of {model_id} is per subject")
        return self.bundle.read_nested_npz(self.bundle.entry(model_id, subject, roi)["metadata"])

    # -- stored responses ----------------------------------------------------------------------------
    def load_insilico_neural_responses(self, modality: str, train_dataset: str, model: str, imageset: str,
                                       subject: int, roi: str | None = None, return_metadata: bool = True,
                                       responses_dir: str | Path | None = None):
        """Upstream's pregenerated responses, or those written by ``nest-rt encode``.

        Looks in ``responses_dir`` when given (an encode OUT folder or a legacy toolkit), else in
        the bundle's converted metadata and the exported toolkit's
        ``pregenerated_insilico_neural_responses``. Returns a lazy h5py Dataset (or a
        memory-mapped array for encode outputs without --h5; fsaverage: (lh, rh)) and, with
        ``return_metadata``, the metadata dict. ``imageset`` is 'nsd', 'imagenet_val' or 'things'
        for upstream's files, or the name given to ``nest-rt encode``.
        """
        request = responses.parse_request(modality, train_dataset, model, imageset, subject, roi,
                                          return_metadata)
        if responses_dir is not None:
            roots = responses.response_roots(responses_dir)
        else:
            candidates = [self.bundle.root / responses.PREGENERATED_DIR]
            nest_dir = self.bundle.manifest.get("source", {}).get("nest_dir")
            if nest_dir:
                candidates.append(Path(nest_dir) / responses.PREGENERATED_DIR)
            roots = [folder for folder in candidates if folder.is_dir()]
            if not roots:
                raise ResponsesNotFoundError(
                    f"no {responses.PREGENERATED_DIR} in the bundle or its toolkit ({[str(c) for c in candidates]}); "
                    "pass responses_dir= (a nest-rt encode output or a legacy toolkit)")
        return responses.load_request(roots, request, self.bundle)

    def _resolve(self, modality, train_dataset, model, subject, roi):
        catalog.require_str("modality", modality)
        model_id = catalog.model_id_for_legacy(modality, train_dataset, model)
        subject = catalog.validate_subject(model_id, subject)
        # upstream requires roi for fMRI and ignores it for EEG
        roi = catalog.validate_roi(model_id, roi) if catalog.rois(model_id) else None
        return model_id, subject, roi


def _check_model(model: Any) -> None:
    if not isinstance(model, EncodingModel):
        raise ParameterTypeError("encoding_model must be the object returned by get_encoding_model, "
                                 f"got {type(model).__name__}")


_DESCRIPTIONS = {
    FWRF: "feature-weighted receptive field (fwRF) encoders of NSD fMRI responses, one per subject and ROI",
    EEG: "ViT-B/32 features -> PCA -> linear regression encoders of THINGS EEG2 responses",
    FSAVERAGE: "ViT-B/32 features -> PCA -> linear regression encoders of NSD fMRI responses on the "
               "fsaverage surface",
}
_OUTPUTS = {
    FWRF: "float32 [N, voxels] in the ROI's metadata voxel order",
    EEG: "float32 [N, 4 repetitions, channels, times] (63 channels x 140 times unless selected)",
    FSAVERAGE: "tuple (lh float32 [N, vertices], rh float32 [N, vertices]) (163,842 each unless selected)",
}
_EXAMPLES = {
    FWRF: "nest.get_encoding_model('fmri-nsd-fwrf', subject=1, selection={'roi': 'V1'})",
    EEG: "nest.get_encoding_model('eeg-things_eeg_2-vit_b_32', subject=1, selection={'channels': ['Oz']})",
    FSAVERAGE: "nest.get_encoding_model('fmri-nsd_fsaverage-vit_b_32', subject=1, selection={'roi': 'V1v'})",
}
