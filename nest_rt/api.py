"""The ``NEST`` class: upstream's legacy API and its current model-ID API, over an exported bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import catalog, responses, selection as selections
from .bundle import Bundle
from .catalog_entries import ModelEntry
from .encode_loop import encode_models
from .errors import InvalidParameterError, ParameterTypeError, ResponsesNotFoundError, StimulusError
from .images import Stimulus
from .models import Backbone, EncodingModel, FwrfEncodingModel, LinearEncodingModel, LinearHead, StackedModel
from .response_files import PREGENERATED_DIR


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
    ``precision`` selects the backbones' precision: 'fp32' (default), 'int8' (dynamic quantisation,
    for the CPU) or 'fp16' (CUDA only), the last two if the bundle was exported with
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
        self._backbones: dict[str, Backbone] = {}  # one per backbone and NEST object, shared by its models
        self._heads: dict[tuple, LinearHead] = {}  # one per subject and variant, shared by its selections

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
            found.setdefault(entry.catalog_modality, []).append(entry.catalog_dataset)
        # each dataset once, though several models (ViT, AlexNet, untrained AlexNet) share it
        result = {modality: sorted(set(datasets)) for modality, datasets in found.items()}
        if print_format:
            for modality, datasets in result.items():
                print(f"{modality}:\n" + "".join(f"  - {name}\n" for name in datasets), end="")
        return result

    def describe(self, model_id: str) -> dict[str, Any]:
        """A model card: what the model is, its inputs, outputs, parameters and what is exported."""
        model_id = catalog.canonical_id(model_id)
        entry = catalog.model_entry(model_id)
        graphs = self.bundle.manifest.get("models", {}).get(model_id, {}).get("graphs", {})
        exported = [s for s in catalog.subjects(model_id) if str(s) in graphs]
        card = {
            "model_id": model_id,
            "model_info": {"modality": entry.modality, "training_dataset": entry.catalog_dataset,
                           "subjects": list(entry.subjects), "exported_subjects": exported},
            "description": entry.description,
            "input": {"stimulus": "uint8 (or integer 0..255) images [N, 3, S, S] or [N, S, S, 3], PIL "
                                  "images or image paths; square, any size S"},
            "output": catalog.describe_outputs(model_id),
            "parameters": {"subject": list(entry.subjects), "selection": sorted(selections.allowed_keys(model_id)),
                           "device": ["auto", "cpu", "cuda"], **_variant_parameters(entry)},
            "parameters_by_function": {
                "get_encoding_model": ["model_id", "subject", "selection", "device", *_variant_parameters(entry)],
                "encode": ["model", "stimulus", "return_metadata", "show_progress", "center_crop"]},
            "performance": {"parity_at_export": {  # subject -> ROI, variant or 'all' -> figures
                subject: {key: graph["parity"] for key, graph in by_key.items()}
                for subject, by_key in graphs.items()}},
            "example_usage": entry.example_usage,
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
                     subject: Any = None, train_split: str | None = None,
                     train_splits: str | None = None) -> EncodingModel:
        model_id = catalog.canonical_id(model_id)
        if subject is None:
            raise InvalidParameterError(f"subject is required for {model_id}; valid subjects: "
                                        f"{catalog.subjects(model_id)}")
        subject = catalog.validate_subject(model_id, subject)
        variants = _variants(model_id, train_split, train_splits)
        return self._load(model_id, subject, device, "current", selection=selection, variants=variants)

    def _load(self, model_id: str, subject, device: str, api: str, roi: str | None = None,
              selection: dict | None = None, variants: tuple[list[str], str | None] = (["all"], None)
              ) -> EncodingModel:
        if not catalog.is_linear(model_id):
            roi = roi or selections.fwrf_roi(model_id, selection)
            return FwrfEncodingModel(self.bundle, model_id, subject, roi, device, self.num_threads, api=api)
        names, stacked_axis = variants
        for variant in names:  # a clear NotExportedError before anything else
            self.bundle.entry(model_id, subject, variant)
        entry = self.bundle.entry(model_id, subject, names[0])
        plans = selections.plan(model_id, selection, lambda: self.bundle.read_nested_npz(entry["metadata"]))
        parts = []
        for variant in names:
            key = (model_id, subject, variant)
            if key not in self._heads:
                self._heads[key] = LinearHead(self.bundle, model_id, subject, variant, self.num_threads)
            parts.append(LinearEncodingModel(self.bundle, model_id, subject, variant, plans, self._backbone(model_id),
                                          self._heads[key], device, api=api, selection=selection))
        return StackedModel(parts, stacked_axis) if stacked_axis else parts[0]

    def release_heads(self) -> None:
        """Forget the cached heads of the linear models (each may hold its subject's folded PCA
        matrix, about 460 MB for the ViT); models loaded earlier keep theirs alive until they are
        dropped."""
        self._heads.clear()

    def _backbone(self, model_id: str) -> Backbone:
        name = catalog.model_entry(model_id).backbone
        if name not in self._backbones:
            self._backbones[name] = Backbone(self.bundle, self.num_threads, self.precision, name)
        return self._backbones[name]

    # -- encoding ----------------------------------------------------------------------------------
    def encode(self, encoding_model: EncodingModel | None = None, images: Any = None,
               return_metadata: bool | None = None, device: str = "auto", show_progress: bool = True, *,
               stimulus: Any = None, model: EncodingModel | None = None, center_crop: bool = False):
        """In silico responses, optionally with the model's metadata.

        fMRI fwRF: [N, voxels]; EEG: [N, 4, channels, times]; fsaverage: (lh [N, Vl], rh [N,
        Vr]); MEG [N, sensors, times]; THINGS fMRI [N, voxels]; Utah array [N, electrodes,
        times]; all float32 (``describe(model_id)['output']`` for each). ``return_metadata``
        defaults to True for models loaded through the legacy call and False for the model-ID
        call, as upstream. The legacy names (``encoding_model``, ``images``) and the current
        ones (``model``, ``stimulus``) are both accepted. Images must be square unless
        ``center_crop`` (new) crops them to their central square.
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

        Images are decoded once per batch and each backbone (ViT-B/32, AlexNet, untrained AlexNet)
        runs once per batch for every model on it (EEG, MEG, fsaverage, THINGS fMRI, Utah array):
        ten EEG subjects cost little more than one backbone pass.
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

    def get_model_metadata(self, model_id: str, subject: Any = None, roi: str | None = None,
                           train_split: str | None = None) -> dict[str, Any]:
        """A subject's metadata (fwRF: of one ROI). MEG's metadata is the same for every training
        split (upstream's is split-agnostic), so ``train_split`` only says which export to read."""
        model_id = catalog.canonical_id(model_id)
        if subject is None:
            raise InvalidParameterError(f"subject is required; valid subjects: {catalog.subjects(model_id)}")
        subject = catalog.validate_subject(model_id, subject)
        if not catalog.is_linear(model_id):  # the fwRF: one model per ROI
            key = catalog.validate_roi(model_id, roi)
        elif roi is not None:
            raise InvalidParameterError(f"roi applies to {catalog.fwrf_model().id} only; "
                                        f"the metadata of {model_id} is per subject")
        elif train_split is not None:
            key = _variants(model_id, train_split, None)[0][0]
        else:
            exported = self.bundle.manifest["models"].get(model_id, {}).get("graphs", {}).get(str(subject), {})
            key = next(iter(exported), catalog.variants(model_id)[0])
        return self.bundle.read_nested_npz(self.bundle.entry(model_id, subject, key)["metadata"])

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
            candidates = [self.bundle.root / PREGENERATED_DIR]
            nest_dir = self.bundle.manifest.get("source", {}).get("nest_dir")
            if nest_dir:
                candidates.append(Path(nest_dir) / PREGENERATED_DIR)
            roots = [folder for folder in candidates if folder.is_dir()]
            if not roots:
                raise ResponsesNotFoundError(
                    f"no {PREGENERATED_DIR} in the bundle or its toolkit ({[str(c) for c in candidates]}); "
                    "pass responses_dir= (a nest-rt encode output or a legacy toolkit)")
        return responses.load_request(roots, request, self.bundle)

    def _resolve(self, modality, train_dataset, model, subject, roi):
        catalog.require_str("modality", modality)
        model_id = catalog.model_id_for_legacy(modality, train_dataset, model)
        subject = catalog.validate_subject(model_id, subject)
        # upstream requires roi for fMRI and ignores it for EEG
        roi = catalog.validate_roi(model_id, roi) if catalog.rois(model_id) else None
        return model_id, subject, roi


def _variant_parameters(entry: ModelEntry) -> dict[str, list[str]]:
    described = entry.variants
    if not described:
        return {}
    found = {described.parameter: list(described.values)}
    if described.stacked:
        found[described.stacked.parameter] = list(described.stacked.values)
    return found


def _variants(model_id: str, train_split: Any, train_splits: Any) -> tuple[list[str], str | None]:
    """The variants to load, and the axis they are stacked on (None for one model).
    ``train_split`` names one ('full', 'split1'..); ``train_splits`` is the newest card's
    parameter: 'all' (the full model) or 'single' (the split models stacked)."""
    described = catalog.model_entry(model_id).variants
    if described is None:
        if train_split is not None or train_splits is not None:
            raise InvalidParameterError(f"{model_id} has no training splits; leave train_split out")
        return ["all"], None
    stacked = described.stacked
    if train_splits is not None:
        if stacked is None:
            raise InvalidParameterError(f"{model_id} has no stacked variants; leave train_splits out "
                                        f"and give {described.parameter}")
        if train_split is not None:
            raise InvalidParameterError("give train_split or train_splits, not both")
        catalog.require_str(stacked.parameter, train_splits)
        catalog.require_choice(stacked.parameter, train_splits, list(stacked.values))
        chosen = stacked.values[train_splits]
        return ([chosen], None) if isinstance(chosen, str) else (list(chosen), stacked.axis)
    if train_split is None:
        return [described.default], None
    if stacked and train_split in stacked.values:  # 'all' / 'single' given as train_split
        return _variants(model_id, None, train_split)
    return [catalog.validate_variant(model_id, train_split)], None


def _check_model(model: Any) -> None:
    if not isinstance(model, EncodingModel):
        raise ParameterTypeError("encoding_model must be the object returned by get_encoding_model, "
                                 f"got {type(model).__name__}")
