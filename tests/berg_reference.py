"""Upstream-style reference of BERG's linear models (a test helper, not a test file).

Computes what upstream BERG returns for a toolkit's files and backbone features, following
upstream's model loaders (berg/models/eeg/things_eeg2_vit_b_32.py, meg/things_meg_1_vit_b_32.py,
fmri/things_fmri_1_vit_b_32.py, utah_array/tvsd_vit_b_32.py, fmri/nsd_fsaverage_vit_b_32.py, and
the AlexNet ones: eeg/things_eeg2_alexnet[_untrained].py, fmri/nsd_fsaverage_alexnet[_untrained].py)
in their order of operations, with scikit-learn's StandardScaler, PCA and LinearRegression rebuilt
from the stored attributes (or, for the current EEG files, the pickled PCA objects themselves).
File paths, selections and heads are written here from upstream's loaders, independently of
nest_rt and of the exporter: the ViT backbone comes from the exporter's registry
(nest_rt_export.backbones); the AlexNet backbones are built here from torchvision, as upstream's
loaders build them.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from nest_rt_export import backbones
from nest_rt_export.torch_reference import reference_features
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

BATCH = 100
EEG = "eeg-things_eeg_2-vit_b_32"
FSAVERAGE = "fmri-nsd_fsaverage-vit_b_32"
MEG = "meg-things_meg_1-vit_b_32"
THINGS_FMRI = "fmri-things_fmri_1-vit_b_32"
TVSD = "utah_array-tvsd-vit_b_32"
MEG_SPLITS = ("split1", "split2", "split3", "split4")
_PCA_KEYS = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_", "singular_values_",
             "n_components_", "n_samples_", "noise_variance_", "n_features_in_")


VIT = backbones.get("vit_b_32")


def vit_extractor(vit_weights_path):
    """upstream's ViT-B/32 feature extractor with the state dict at ``vit_weights_path``."""
    return VIT.reference(VIT.network(vit_weights_path))


def vit_features(extractor, images: np.ndarray) -> np.ndarray:
    """[N, 460800] float32 features of uint8 images [N, 3, H, W] from a ``vit_extractor``, after
    upstream's transform, in batches of 100 as upstream."""
    return reference_features(extractor, images, VIT.transform())


def upstream_features(vit_weights_path, images: np.ndarray) -> np.ndarray:
    """[N, 460800] float32 ViT features of uint8 images [N, 3, H, W], as upstream extracts them."""
    return vit_features(vit_extractor(vit_weights_path), images)


# upstream's AlexNet return nodes, in its order
ALEXNET_NODES = ["features.2", "features.5", "features.7", "features.9", "features.12",
                 "classifier.2", "classifier.5", "classifier.6"]


def upstream_alexnet(weights_path=None):
    """torchvision's alexnet as upstream's loaders build it: the given state dict (standing in
    for weights='DEFAULT'), or, with None, the untrained one: ``torch.manual_seed(20200220)``
    then ``alexnet(weights=None)`` (here inside fork_rng, so the tests' random state is kept)."""
    import torch
    from torchvision.models import alexnet
    if weights_path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(20200220)
            return alexnet(weights=None).eval()
    model = alexnet()
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    return model.eval()


def alexnet_extractor(model):
    """upstream's feature extractor over ``model`` (built once, when upstream loads a model)."""
    from torchvision.models.feature_extraction import create_feature_extractor
    return create_feature_extractor(model, return_nodes=ALEXNET_NODES).eval()


def upstream_alexnet_features(extractor, images: np.ndarray) -> np.ndarray:
    """[N, 205672] features as upstream extracts them with an ``alexnet_extractor``: the AlexNet
    weights' transforms() on the whole uint8 batch, then batches of 100, each node flattened and
    concatenated in node order."""
    import torch
    from torchvision.models import AlexNet_Weights
    transformed = AlexNet_Weights.IMAGENET1K_V1.transforms()(torch.from_numpy(np.ascontiguousarray(images)))
    out = []
    with torch.no_grad():
        for start in range(0, len(transformed), BATCH):
            nodes = extractor(transformed[start:start + BATCH])
            out.append(torch.cat([nodes[name].flatten(1) for name in ALEXNET_NODES], dim=1).numpy())
    return np.concatenate(out)


def upstream_responses(berg_dir, model_id: str, subject, features: np.ndarray, selection: dict | None = None,
                       train_split: str = "full"):
    """Upstream's ``encode`` output for precomputed ``features`` float32 (ViT [N, 460800],
    AlexNet [N, 205672]).

    EEG (N, 4, C, T); MEG (N, S, T), or (N, 4, S, T) for ``train_split="single"``;
    THINGS-fMRI (N, V); TVSD (N, E, T); fsaverage a tuple (lh (N, n_lh), rh (N, n_rh))."""
    root = Path(berg_dir) / "encoding_models"
    features = np.asarray(features, dtype=np.float32)
    selection = dict(selection or {})
    if model_id == EEG:
        return _eeg(root / "modality-eeg/train_dataset-things_eeg_2/model-vit_b_32", int(subject), features,
                    selection)
    if model_id == MEG:
        return _meg(root / "modality-meg/train_dataset-things_meg_1/model-vit_b_32", int(subject), features,
                    selection, train_split)
    if model_id == THINGS_FMRI:
        return _things_fmri(root / "modality-fmri/train_dataset-things_fmri_1/model-vit_b_32", int(subject),
                            features, selection)
    if model_id == TVSD:
        return _tvsd(root / "modality-utah_array/train_dataset-tvsd/model-vit_b_32", str(subject), features,
                     selection)
    if model_id == FSAVERAGE:
        return _fsaverage(root / "modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32", int(subject),
                          features, selection)
    modality, dataset, network = model_id.split("-")
    if network in ("alexnet", "alexnet_untrained") and (modality, dataset) == ("eeg", "things_eeg_2"):
        return _eeg(root / f"modality-eeg/train_dataset-things_eeg_2/model-{network}", int(subject), features,
                    selection)
    if network in ("alexnet", "alexnet_untrained") and (modality, dataset) == ("fmri", "nsd_fsaverage"):
        return _fsaverage(root / f"modality-fmri/train_dataset-nsd_fsaverage/model-{network}", int(subject),
                          features, selection)
    raise ValueError(f"no upstream reference for model {model_id!r}")


# -- shared pieces ----------------------------------------------------------------------
_KEPT_FILES: dict | None = None  # path -> content, inside files_read_once()


@contextlib.contextmanager
def files_read_once():
    """Within it, each toolkit file is read once and kept: upstream reads its files when a model
    is built, not at each encode, so the benchmark's first (untimed) call reads them and its
    timed call does not. Leaving it drops them."""
    global _KEPT_FILES
    _KEPT_FILES = {}
    try:
        yield
    finally:
        _KEPT_FILES = None


def _load(path: Path) -> dict:
    if _KEPT_FILES is not None and str(path) in _KEPT_FILES:
        return _KEPT_FILES[str(path)]
    content = np.load(path, allow_pickle=True).item()
    if _KEPT_FILES is not None:
        _KEPT_FILES[str(path)] = content
    return content


def _set(estimator, attributes: dict, keys):
    for key in keys:
        if key in attributes:
            setattr(estimator, key, attributes[key])
    return estimator


def _scaler(params: dict) -> StandardScaler:
    return _set(StandardScaler(), params, ("mean_", "var_", "scale_", "n_features_in_", "n_samples_seen_"))


def _pca(params, random_state=None) -> PCA:
    """The pickled PCA object as stored, or one rebuilt from a dict as upstream's loaders do."""
    if isinstance(params, PCA):
        return params
    if isinstance(params, dict):
        return _set(PCA(n_components=250, random_state=random_state), params, _PCA_KEYS)
    raise TypeError(f"a PCA is a sklearn PCA or a dict of its attributes, not {type(params).__name__}")


def _regression(params: dict, rows=None, dtype=None) -> LinearRegression:
    """LinearRegression with the coef_/intercept_ rows of the selection, sliced before predicting."""
    coef, intercept = np.asarray(params["coef_"]), np.asarray(params["intercept_"])
    if rows is not None:
        coef, intercept = coef[rows], intercept[rows]
    if dtype is not None:
        coef, intercept = coef.astype(dtype), intercept.astype(dtype)
    return _set(LinearRegression(), {"coef_": coef, "intercept_": intercept,
                                     "n_features_in_": params.get("n_features_in_", coef.shape[1])},
                ("coef_", "intercept_", "n_features_in_"))


def _components(scaler: StandardScaler, pca: PCA, batch: np.ndarray) -> np.ndarray:
    return pca.transform(scaler.transform(batch)).astype(np.float32)


def _batches(features: np.ndarray):
    for start in range(0, len(features), BATCH):
        yield features[start:start + BATCH]


def _binary(vector, length: int, name: str) -> np.ndarray:
    """Ascending positions of the ones of a binary vector (upstream's validate_binary_array)."""
    array = np.asarray(vector)
    if array.ndim != 1 or len(array) != length:
        raise ValueError(f"{name} must be a binary vector of length {length}")
    if not np.isin(array, (0, 1)).all() or not (array == 1).any():
        raise ValueError(f"{name} must hold only 0 and 1, with at least one 1")
    return np.where(array == 1)[0]


def _check_keys(selection: dict, allowed) -> None:
    unknown = sorted(set(selection) - set(allowed))
    if unknown:
        raise ValueError(f"unknown selection keys {unknown}; allowed: {sorted(allowed)}")


def _as_list(value, name: str) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list")
    return list(value)


# -- EEG ----------------------------------------------------------------------------------
def _eeg(folder: Path, subject: int, features, selection):
    _check_keys(selection, ("channels", "timepoints"))
    weights = _load(folder / "encoding_models_weights" / f"weights_subject-{subject:02d}.npy")
    metadata = _load(folder / "metadata" / f"metadata_subject-{subject:02d}.npy")
    ch_names = list(metadata["eeg"]["ch_names"])  # upstream calls ch_names.index(name)
    n_channels, n_times = len(ch_names), len(metadata["eeg"]["times"])
    if "channels" in selection:
        names = _as_list(selection["channels"], "channels")
        missing = [name for name in names if name not in ch_names]
        if missing or not names:
            raise ValueError(f"unknown EEG channels {missing}")
        channels = [ch_names.index(name) for name in names]  # user order, duplicates kept
    else:
        channels = list(range(n_channels))
    times = _binary(selection["timepoints"], 140, "timepoints") if "timepoints" in selection \
        else np.arange(n_times)

    scaler = _scaler(weights["scaler_param"])
    pca_param = weights["pca_param"]
    shared_pca = isinstance(pca_param, dict) and "components_" in pca_param  # NEST 1.0.0 / BERG 2.0.0 form
    pcas = [_pca(pca_param)] * 4 if shared_pca else [_pca(pca_param[f"rep-{r}"]) for r in range(1, 5)]
    regressions = []
    for r in range(1, 5):
        params = weights["reg_param"][f"rep-{r}"]
        components = np.asarray(params["coef_"]).shape[1]
        coef = np.asarray(params["coef_"]).reshape(n_channels, n_times, components)[channels][:, times]
        intercept = np.asarray(params["intercept_"]).reshape(n_channels, n_times)[channels][:, times]
        regressions.append(_regression({"coef_": coef.reshape(-1, components), "intercept_": intercept.reshape(-1),
                                        "n_features_in_": params["n_features_in_"]}))
    shape = (len(channels), len(times))
    out = []
    for batch in _batches(features):
        shared = _components(scaler, pcas[0], batch) if shared_pca else None
        reps = []
        for r in range(4):
            p = shared if shared_pca else _components(scaler, pcas[r], batch)
            y = regressions[r].predict(p).astype(np.float32)
            reps.append(y.reshape(len(batch), *shape))
        out.append(np.swapaxes(np.stack(reps), 0, 1).astype(np.float32))
    return np.concatenate(out)


# -- MEG ----------------------------------------------------------------------------------
MEG_SENSORS, MEG_TIMES = 271, 281


def _meg(folder: Path, subject: int, features, selection, train_split: str):
    if train_split == "single":
        return np.stack([_meg(folder, subject, features, selection, split) for split in MEG_SPLITS], axis=1)
    if train_split == "all":
        train_split = "full"
    if train_split not in ("full", *MEG_SPLITS):
        raise ValueError(f"unknown MEG train split {train_split!r}")
    _check_keys(selection, ("region", "sensors", "sensor_index", "timepoints"))
    path = folder / "encoding_models_weights" / f"weights_P{subject}_{train_split}.npy"
    if train_split == "full" and not path.is_file():
        path = folder / "encoding_models_weights" / f"weights_P{subject}.npy"  # older single file
    weights = _load(path)
    sensors_meta = _load(folder / "metadata" / f"metadata_P{subject}.npy")["sensors"]
    sensor_sets = []
    if "region" in selection:
        regions = np.asarray(sensors_meta["sensor_regions"])
        for region in _as_list(selection["region"], "region"):
            sensor_sets.append(np.where(regions == region)[0])
    if "sensors" in selection:
        prefixes = np.asarray(sensors_meta["sensor_prefixes"])
        for prefix in _as_list(selection["sensors"], "sensors"):
            sensor_sets.append(np.where(prefixes == prefix)[0])
    if "sensor_index" in selection:
        sensor_sets.append(_binary(selection["sensor_index"], MEG_SENSORS, "sensor_index"))
    sensors = sorted(set(np.concatenate(sensor_sets).tolist())) if sensor_sets else list(range(MEG_SENSORS))
    if not sensors:
        raise ValueError("the MEG selection holds no sensor")
    times = _binary(selection["timepoints"], MEG_TIMES, "timepoints").tolist() if "timepoints" in selection \
        else list(range(MEG_TIMES))
    rows = [s * MEG_TIMES + t for s in sensors for t in times]
    scaler = _scaler(weights["scaler_param"])
    pca = _pca(weights["pca_param"], random_state=20200220)
    regression = _regression(weights["reg_param"], rows)
    out = [regression.predict(_components(scaler, pca, batch)).astype(np.float32)
           .reshape(len(batch), len(sensors), len(times)) for batch in _batches(features)]
    return np.concatenate(out).astype(np.float32)


# -- THINGS-fMRI --------------------------------------------------------------------------
THINGS_FMRI_VOXELS = 211_339


def _things_fmri(folder: Path, subject: int, features, selection):
    _check_keys(selection, ("roi", "voxel_index"))
    weights = _load(folder / "encoding_models_weights" / f"weights_sub-0{subject}.npy")
    rows = None
    if selection:
        parts = []
        if "roi" in selection:
            rois = _load(folder / "metadata" / f"metadata_sub-0{subject}.npy")["roi"]
            for roi in _as_list(selection["roi"], "roi"):
                if roi not in rois:
                    raise ValueError(f"unknown THINGS-fMRI ROI {roi!r}")
                parts.append(np.asarray(rois[roi]))  # user order, no dedup, no sort
        if "voxel_index" in selection:
            parts.append(_binary(selection["voxel_index"], THINGS_FMRI_VOXELS, "voxel_index"))
        rows = np.concatenate(parts).astype(np.int64)
    scaler = _scaler(weights["scaler_param"])
    pca = _pca(weights["pca_param"])
    regression = _regression(weights["reg_param"], rows, dtype=np.float32)  # float32 arithmetic, no cast
    return np.concatenate([regression.predict(_components(scaler, pca, batch)) for batch in _batches(features)])


# -- TVSD ---------------------------------------------------------------------------------
TVSD_ELECTRODES, TVSD_TIMES = 1024, 300


def _tvsd(folder: Path, monkey: str, features, selection):
    _check_keys(selection, ("roi", "electrodes", "timepoints"))
    weights = _load(folder / "encoding_models_weights" / f"weights_monkey{monkey}.npy")
    electrode_mask = np.ones(TVSD_ELECTRODES, dtype=bool)
    if "roi" in selection or "electrodes" in selection:
        electrode_mask[:] = False
        if "roi" in selection:
            roi_meta = _load(folder / "metadata" / f"metadata_monkey{monkey}.npy")["roi"]
            labels = list(roi_meta["roi_labels"])  # upstream calls roi_labels.index(roi)
            assignments = np.asarray(roi_meta["roi_assignments"])
            for roi in _as_list(selection["roi"], "roi"):
                if roi not in labels:
                    raise ValueError(f"unknown TVSD ROI {roi!r}")
                electrode_mask[assignments == labels.index(roi)] = True
        if "electrodes" in selection:
            electrode_mask[_binary(selection["electrodes"], TVSD_ELECTRODES, "electrodes")] = True
    time_mask = np.ones(TVSD_TIMES, dtype=bool)
    if "timepoints" in selection:
        time_mask[:] = False
        time_mask[_binary(selection["timepoints"], TVSD_TIMES, "timepoints")] = True
    rows = np.outer(electrode_mask, time_mask).ravel()
    shape = (int(electrode_mask.sum()), int(time_mask.sum()))
    scaler = _scaler(weights["scaler_param"])
    pca = _pca(weights["pca_param"])
    regression = _regression(weights["reg_param"], rows)
    out = [regression.predict(_components(scaler, pca, batch)).astype(np.float32).reshape(len(batch), *shape)
           for batch in _batches(features)]
    return np.concatenate(out).astype(np.float32)


# -- fsaverage ----------------------------------------------------------------------------
FSAVERAGE_VERTICES = 163_842


def _fsaverage(folder: Path, subject: int, features, selection):
    _check_keys(selection, ("roi", "lh_vertices", "rh_vertices"))
    weights = _load(folder / "encoding_models_weights" / f"weights_subject-{subject:02d}.npy")
    lh_rows = rh_rows = None
    if "roi" in selection:  # takes precedence; validate_roi(...)[0]: only the first ROI is used
        roi = _as_list(selection["roi"], "roi")[0]
        fmri = _load(folder / "metadata" / f"metadata_subject-{subject:02d}.npy")["fmri"]
        lh_rows, rh_rows = np.asarray(fmri["lh_fsaverage_rois"][roi]), np.asarray(fmri["rh_fsaverage_rois"][roi])
    else:
        if "lh_vertices" in selection:
            lh_rows = _binary(selection["lh_vertices"], FSAVERAGE_VERTICES, "lh_vertices")
        if "rh_vertices" in selection:
            rh_rows = _binary(selection["rh_vertices"], FSAVERAGE_VERTICES, "rh_vertices")
    scaler = _scaler(weights["scaler_param"])
    pca = _pca(weights["pca_param"])
    lh = _regression(weights["lh_reg_param"], lh_rows)
    rh = _regression(weights["rh_reg_param"], rh_rows)
    lh_out, rh_out = [], []
    for batch in _batches(features):
        p = _components(scaler, pca, batch)
        lh_out.append(lh.predict(p).astype(np.float32))
        rh_out.append(rh.predict(p).astype(np.float32))
    return np.concatenate(lh_out), np.concatenate(rh_out)
