"""Synthetic BERG toolkit files for the ViT-B/32 linear models, in upstream's formats (as
upstream BERG's model loaders, training scripts and model cards describe them).

``write_berg_toolkit`` writes, under ``berg_dir``:

- the random torchvision ViT-B/32 state dict of ``synthetic_vit.write_vit_weights`` (so
  ``--vit-weights`` works as with the NEST synthetic toolkits), and a per-model
  StandardScaler calibrated on that ViT's features, as ``synthetic_vit.write_vit_toolkit`` does;
- EEG (``eeg-things_eeg_2-vit_b_32``, current format): one scaler, four PCAs (``rep-1``..``rep-4``)
  stored as real pickled ``sklearn.decomposition.PCA`` objects (``eeg_pca_form="object"``) or as
  plain dicts of their attributes (``"dict"``, the intermediate upstream variant), four
  regressions; metadata whose ``ch_names`` is an ndarray of str for odd subjects and a list for
  even ones;
- MEG (``meg-things_meg_1-vit_b_32``): one weights file per train split
  (``weights_P{n}_{split}.npy``), or the older single ``weights_P{n}.npy``, and the sensor
  metadata (271 CTF sensor names, prefixes, hemispheres, regions);
- THINGS-fMRI (``fmri-things_fmri_1-vit_b_32``): ``weights_sub-0{n}.npy`` with 211,339 voxels and
  metadata with the 29 ROIs (overlapping, some unsorted);
- TVSD (``utah_array-tvsd-vit_b_32``): ``weights_monkey{N|F}.npy`` with 1,024 electrodes x 300
  time points and metadata with shuffled V1/V4/IT assignments;
- the AlexNet models (``model-alexnet`` and ``model-alexnet_untrained``): EEG as the ViT one's
  current format (four PCAs, as objects or dicts) and fsaverage (one PCA as plain arrays, two
  hemispheres of 163,842 vertices, the newer card's metadata: ``nsdgeneral`` among the ROIs and
  ``_nsdcore`` / ``_nsdsynthetic`` accuracy keys), with 205,672 features. Their scalers are
  calibrated on the features of their own backbone: a random torchvision alexnet state dict
  (``alexnet_synthetic.pth``, for ``--alexnet-weights``) for the trained one, upstream's seeded
  initialisation for the untrained one.

The file paths are written out here from upstream's loaders on purpose, and not read from
models_manifest.json: a toolkit built from the manifest's own patterns could not reveal a wrong
pattern in the manifest, while one built from upstream's makes the runtime fail to find it.

Every ``.npy`` file is a pickled dict in a 0-d object array (``np.save(..., allow_pickle=True)``).
Output sizes are always the real ones; ``components`` (250 in real files) can be made small for
fast tests. ``coef_dtype`` chooses the dtype of ``coef_`` and ``intercept_`` (unknown upstream).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from . import backbones
from .synthetic_linear import calibration_features, random_pca, random_regression, random_scaler, save_npy_dict
from .synthetic_vit import _eeg_metadata

ROOT = "encoding_models"
EEG_DIR = f"{ROOT}/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32"
MEG_DIR = f"{ROOT}/modality-meg/train_dataset-things_meg_1/model-vit_b_32"
THINGS_FMRI_DIR = f"{ROOT}/modality-fmri/train_dataset-things_fmri_1/model-vit_b_32"
TVSD_DIR = f"{ROOT}/modality-utah_array/train_dataset-tvsd/model-vit_b_32"
ALEXNET_BACKBONES = ("alexnet", "alexnet_untrained")
ALEXNET_WEIGHTS_NAME = backbones.get("alexnet").random_weights_name  # alexnet_synthetic.pth
FSAVERAGE_VERTICES = 163_842
# the fsaverage ROIs of the AlexNet card; the metadata names OVWFA 'OWFA' (NSD's colour table)
FSAVERAGE_ROIS = ("V1d", "V1v", "V2d", "V2v", "V3d", "V3v", "hV4", "OFA", "FFA-1", "FFA-2", "mTL-faces",
                  "aTL-faces", "OWFA", "VWFA-1", "VWFA-2", "mfs-words", "mTL-words", "OPA", "PPA", "RSC",
                  "EBA", "FBA-1", "FBA-2", "mTL-bodies", "early", "midventral", "midlateral", "midparietal",
                  "parietal", "lateral", "ventral", "nsdgeneral")
WEIGHTS = "encoding_models_weights"
METADATA = "metadata"

EEG_CHANNELS, EEG_TIMES = 63, 140
MEG_SENSORS, MEG_TIMES = 271, 281
THINGS_FMRI_VOXELS = 211_339
TVSD_ELECTRODES, TVSD_TIMES = 1024, 300
MEG_SPLITS = ("full", "split1", "split2", "split3", "split4")
THINGS_FMRI_ROIS = ("V1", "V2", "V3", "hV4", "VO1", "VO2", "LO1_prf", "LO2_prf", "TO1", "TO2", "V3b",
                    "V3a", "lFFA", "rFFA", "lOFA", "rOFA", "lEBA", "rEBA", "lPPA", "rPPA", "lRSC",
                    "rRSC", "lTOS", "rTOS", "lLOC", "rLOC", "IT", "lSTS", "rSTS")
TVSD_ROIS = ("V1", "V4", "IT")
# CTF sensors per prefix (131 per hemisphere would be the full 275 system; THINGS-MEG keeps 271)
MEG_PREFIX_COUNTS = {"C": 24, "F": 34, "O": 19, "P": 20, "T": 33}
MEG_MIDLINE_COUNTS = {"MZC": 4, "MZF": 3, "MZO": 3, "MZP": 1}
MEG_REGIONS = {"C": "Central", "F": "Frontal", "O": "Occipital", "P": "Parietal", "T": "Temporal"}
_PCA_ATTRIBUTES = ("components_", "mean_", "explained_variance_", "explained_variance_ratio_",
                   "singular_values_", "n_components_", "n_samples_", "noise_variance_", "n_features_in_")


def eeg_paths(berg_dir: Path, subject: int) -> dict[str, Path]:
    return {"weights": Path(berg_dir) / EEG_DIR / WEIGHTS / f"weights_subject-{subject:02d}.npy",
            "metadata": Path(berg_dir) / EEG_DIR / METADATA / f"metadata_subject-{subject:02d}.npy"}


def alexnet_eeg_paths(berg_dir: Path, backbone: str, subject: int) -> dict[str, Path]:
    folder = Path(berg_dir) / ROOT / f"modality-eeg/train_dataset-things_eeg_2/model-{backbone}"
    return {"weights": folder / WEIGHTS / f"weights_subject-{subject:02d}.npy",
            "metadata": folder / METADATA / f"metadata_subject-{subject:02d}.npy"}


def alexnet_fsaverage_paths(berg_dir: Path, backbone: str, subject: int) -> dict[str, Path]:
    folder = Path(berg_dir) / ROOT / f"modality-fmri/train_dataset-nsd_fsaverage/model-{backbone}"
    return {"weights": folder / WEIGHTS / f"weights_subject-{subject:02d}.npy",
            "metadata": folder / METADATA / f"metadata_subject-{subject:02d}.npy"}


def meg_paths(berg_dir: Path, subject: int, split: str | None) -> dict[str, Path]:
    """``split`` None: the older single weights file ``weights_P{n}.npy``."""
    name = f"weights_P{subject}.npy" if split is None else f"weights_P{subject}_{split}.npy"
    return {"weights": Path(berg_dir) / MEG_DIR / WEIGHTS / name,
            "metadata": Path(berg_dir) / MEG_DIR / METADATA / f"metadata_P{subject}.npy"}


def things_fmri_paths(berg_dir: Path, subject: int) -> dict[str, Path]:
    # upstream formats f'sub-0{subject}' (not {subject:02d}): subject 1 -> sub-01
    return {"weights": Path(berg_dir) / THINGS_FMRI_DIR / WEIGHTS / f"weights_sub-0{subject}.npy",
            "metadata": Path(berg_dir) / THINGS_FMRI_DIR / METADATA / f"metadata_sub-0{subject}.npy"}


def tvsd_paths(berg_dir: Path, monkey: str) -> dict[str, Path]:
    return {"weights": Path(berg_dir) / TVSD_DIR / WEIGHTS / f"weights_monkey{monkey}.npy",
            "metadata": Path(berg_dir) / TVSD_DIR / METADATA / f"metadata_monkey{monkey}.npy"}


def write_berg_toolkit(berg_dir: Path, *, eeg_subjects=(), eeg_pca_form: str = "object", meg_subjects=(),
                       meg_variants=MEG_SPLITS, meg_unsplit: bool = False, things_fmri_subjects=(),
                       tvsd_subjects=(), alexnet_eeg_subjects=(), alexnet_fsaverage_subjects=(),
                       alexnet_backbones=ALEXNET_BACKBONES, components: int = 250, seed: int = 0,
                       coef_dtype: str = "float32") -> Path:
    """Writes the ViT weights and the requested subjects' files; returns ``berg_dir``.

    ``meg_unsplit`` writes the older ``weights_P{n}.npy`` instead of one file per variant; the
    AlexNet subjects are written for each of ``alexnet_backbones`` (EEG with ``eeg_pca_form``)."""
    if eeg_pca_form not in ("object", "dict"):
        raise ValueError(f"eeg_pca_form must be 'object' or 'dict', got {eeg_pca_form!r}")
    if coef_dtype not in ("float32", "float64"):
        raise ValueError(f"coef_dtype must be 'float32' or 'float64', got {coef_dtype!r}")
    unknown = sorted(set(meg_variants) - set(MEG_SPLITS))
    if unknown:
        raise ValueError(f"unknown MEG train splits {unknown}; known: {list(MEG_SPLITS)}")
    bad_monkeys = sorted(set(tvsd_subjects) - {"N", "F"})
    if bad_monkeys:
        raise ValueError(f"TVSD subjects are the monkeys 'N' and 'F', got {bad_monkeys}")
    unknown = sorted(set(alexnet_backbones) - set(ALEXNET_BACKBONES))
    if unknown:
        raise ValueError(f"unknown AlexNet backbones {unknown}; known: {list(ALEXNET_BACKBONES)}")
    berg_dir = Path(berg_dir)
    vit_subjects = (eeg_subjects, meg_subjects, things_fmri_subjects, tvsd_subjects)
    features = _calibration_features(berg_dir, "vit_b_32", seed) if any(vit_subjects) else None
    rng = np.random.default_rng(seed)
    dtype = np.dtype(coef_dtype)
    for subject in eeg_subjects:
        _write_eeg(eeg_paths(berg_dir, int(subject)), int(subject), eeg_pca_form, components, features, rng, dtype)
    for backbone in alexnet_backbones if (alexnet_eeg_subjects or alexnet_fsaverage_subjects) else ():
        alexnet_features = _calibration_features(berg_dir, backbone, seed)
        for subject in alexnet_eeg_subjects:
            _write_eeg(alexnet_eeg_paths(berg_dir, backbone, int(subject)), int(subject), eeg_pca_form, components,
                       alexnet_features, rng, dtype)
        for subject in alexnet_fsaverage_subjects:
            _write_fsaverage(alexnet_fsaverage_paths(berg_dir, backbone, int(subject)), components,
                             alexnet_features, rng, dtype)
    for subject in meg_subjects:
        _write_meg(berg_dir, int(subject), None if meg_unsplit else tuple(meg_variants), components,
                   features, rng, dtype)
    for subject in things_fmri_subjects:
        _write_things_fmri(berg_dir, int(subject), components, features, rng, dtype)
    for monkey in tvsd_subjects:
        _write_tvsd(berg_dir, monkey, components, features, rng, dtype)
    return berg_dir


def _calibration_features(berg_dir: Path, backbone_name: str, seed: int) -> np.ndarray:
    """Features of a backbone on a few synthetic images, as write_vit_toolkit measures them: the
    backbone with its random stand-in weights written beside the toolkit, or, for one that takes
    no weights file (the untrained AlexNet), as upstream builds it."""
    backbone = backbones.get(backbone_name)
    return calibration_features(backbone, backbone.write_random_weights(berg_dir, seed), seed)


def _head(features, rng, components: int, samples: int, outputs: int, dtype) -> dict:
    return {"scaler_param": random_scaler(features, rng),
            "pca_param": random_pca(rng, components, samples, features.shape[1]),
            "reg_param": _cast_regression(random_regression(rng, outputs, components), dtype)}


def _cast_regression(regression: dict, dtype) -> dict:
    return {**regression, "coef_": regression["coef_"].astype(dtype, copy=False),
            "intercept_": regression["intercept_"].astype(dtype, copy=False)}


def _pca_object(attributes: dict, random_state: int) -> PCA:
    """A PCA that looks fitted (what upstream's training pickles with copy.deepcopy(pca))."""
    pca = PCA(n_components=int(attributes["n_components_"]), random_state=random_state)
    for key in _PCA_ATTRIBUTES:
        setattr(pca, key, attributes[key])
    pca._fit_svd_solver = "randomized"  # what "auto" picks for 16,540 x 460,800 and 250 components
    return pca


# -- EEG ----------------------------------------------------------------------------------
def _write_eeg(paths, subject, pca_form, components, features, rng, dtype) -> None:
    pcas, regressions = {}, {}
    for r in range(1, 5):
        attributes = random_pca(rng, components, 16540, features.shape[1])  # fresh components per repetition
        pcas[f"rep-{r}"] = (_pca_object(attributes, 20200220 + 1000 * subject + 10 * r)
                            if pca_form == "object" else attributes)
        regression = random_regression(rng, EEG_CHANNELS * EEG_TIMES, components)
        regressions[f"rep-{r}"] = _cast_regression(regression, dtype)
    save_npy_dict(paths["weights"], {"scaler_param": random_scaler(features, rng), "pca_param": pcas,
                                     "reg_param": regressions})
    metadata = _eeg_metadata(rng)
    if subject % 2 == 1:  # the reference leaves the type open: ndarray of str for odd subjects
        metadata["eeg"]["ch_names"] = np.asarray(metadata["eeg"]["ch_names"], dtype=str)
    else:
        metadata["eeg"]["ch_names"] = list(metadata["eeg"]["ch_names"])
    save_npy_dict(paths["metadata"], metadata)


# -- MEG ----------------------------------------------------------------------------------
def meg_sensor_names() -> np.ndarray:
    """271 CTF-style names (prefix + row digit + index digit), sorted as MNE lists them."""
    names = []
    groups = [(f"M{side}{letter}", count) for side in "LR" for letter, count in MEG_PREFIX_COUNTS.items()]
    for prefix, count in groups + list(MEG_MIDLINE_COUNTS.items()):
        names += [f"{prefix}{i // 7 + 1}{i % 7 + 1}" for i in range(count)]
    assert len(names) == MEG_SENSORS and len(set(names)) == MEG_SENSORS
    return np.asarray(sorted(names), dtype=str)


def _meg_metadata(subject: int, rng) -> dict:
    names = meg_sensor_names()
    prefixes = np.asarray([name[:3] for name in names], dtype=str)
    hemispheres = np.asarray([{"L": "left", "R": "right", "Z": "midline"}[name[1]] for name in names], dtype=str)
    regions = np.asarray([MEG_REGIONS[name[2]] for name in names], dtype=str)
    train, split, test = 22248, 5562, 2400

    def trials(count, kind):
        return np.asarray([f"{kind}_{i:05d}.jpg" for i in range(count)], dtype=str)
    splits = {f"single_training split_{n}": {
        "train_img_files": trials(split, f"split{n}"),
        "correlation_results": rng.uniform(-0.1, 0.5, (MEG_SENSORS, MEG_TIMES)).astype(np.float32),
        "percent_noise_ceiling": rng.uniform(0, 100, (MEG_SENSORS, MEG_TIMES)).astype(np.float32)}
        for n in range(1, 5)}
    return {
        "meg": {"times": np.round(-0.1 + 0.005 * np.arange(MEG_TIMES), 6), "subject_id": f"P{subject}"},
        "sensors": {"sensor_names": names, "sensor_prefixes": prefixes, "sensor_hemispheres": hemispheres,
                    "sensor_regions": regions, "n_sensors": MEG_SENSORS},
        "encoding_model": {
            "all_training_splits": {
                "train_img_files": trials(train, "train"),
                "correlation_results": rng.uniform(-0.1, 0.6, (MEG_SENSORS, MEG_TIMES)).astype(np.float32),
                "percent_noise_ceiling": rng.uniform(0, 100, (MEG_SENSORS, MEG_TIMES)).astype(np.float32)},
            **splits,
            "test_img_files": trials(test, "test"),
            "ncsnr": rng.uniform(0, 1, (MEG_TIMES, MEG_SENSORS)).astype(np.float32),
            "noise_ceiling": rng.uniform(0, 100, (MEG_TIMES, MEG_SENSORS)).astype(np.float32)},
    }


def _write_meg(berg_dir, subject, variants, components, features, rng, dtype) -> None:
    # each train split is its own trained model: its own scaler, PCA and regression
    for split in (None,) if variants is None else variants:
        samples = 22248 if split in (None, "full") else 5562
        save_npy_dict(meg_paths(berg_dir, subject, split)["weights"],
              _head(features, rng, components, samples, MEG_SENSORS * MEG_TIMES, dtype))
    save_npy_dict(meg_paths(berg_dir, subject, None)["metadata"], _meg_metadata(subject, rng))


# -- THINGS-fMRI --------------------------------------------------------------------------
def _things_fmri_rois(rng) -> dict[str, np.ndarray]:
    """29 ROIs of 50..3000 voxels; a third left unsorted, several overlapping others."""
    n = THINGS_FMRI_VOXELS
    rois: dict[str, np.ndarray] = {}
    for index, name in enumerate(THINGS_FMRI_ROIS):
        size = int(rng.integers(50, 3001))
        start = int(rng.integers(0, n - 3 * size))
        voxels = start + rng.choice(3 * size, size, replace=False)  # random order
        rois[name] = voxels if index % 3 == 1 else np.sort(voxels)
    overlaps = {"V2": ("V1",), "V3a": ("V3b",), "lLOC": ("LO1_prf", "LO2_prf"), "IT": ("lFFA", "rFFA"),
                "rSTS": ("lSTS",)}
    for name, others in overlaps.items():
        own = rois[name]
        take = max(10, len(own) // (2 * len(others)))  # sizes stay within 50..3000
        shared = np.concatenate([rng.choice(rois[other], min(take, len(rois[other])), replace=False)
                                 for other in others])
        merged = np.union1d(own[:len(own) - len(shared)], shared)
        rois[name] = rng.permutation(merged) if name in ("IT", "V2") else merged
    return {name: voxels.astype(np.int64) for name, voxels in rois.items()}


def _write_things_fmri(berg_dir, subject, components, features, rng, dtype) -> None:
    paths = things_fmri_paths(berg_dir, subject)
    n = THINGS_FMRI_VOXELS
    save_npy_dict(paths["weights"], _head(features, rng, components, 8640, n, dtype))
    grid = (72, 91, 75)  # a 2 mm volume; the voxels are a subset of it in C order
    flat = np.sort(rng.choice(int(np.prod(grid)), n, replace=False))
    coords = np.stack(np.unravel_index(flat, grid), axis=1).astype(np.int64)
    concepts = np.asarray([f"concept_{i:04d}" for i in range(720)], dtype=str)
    save_npy_dict(paths["metadata"], {
        "fmri": {"voxel_coords": coords, "n_voxels": n, "subject_id": f"sub-0{subject}"},
        "encoding_model": {
            "train_stimuli": np.asarray([f"{concepts[i % 720]}_{i // 720:02d}s.jpg" for i in range(8640)], dtype=str),
            "train_concepts": concepts,
            "test_stimuli": np.asarray([f"test_{i:03d}.jpg" for i in range(100)], dtype=str),
            "test_concepts": concepts[:100],
            "noise_ceiling_singletrial": rng.uniform(0, 60, n).astype(np.float32),
            "noise_ceiling_testset": rng.uniform(0, 90, n).astype(np.float32),
            "splithalf_uncorrected": rng.uniform(-0.1, 0.8, n).astype(np.float32),
            "splithalf_corrected": rng.uniform(-0.1, 0.9, n).astype(np.float32),
            "correlation_results": rng.uniform(-0.1, 0.7, n).astype(np.float32)},
        "prf": {"eccentricity": rng.uniform(0, 10, n).astype(np.float32),
                "polarangle": rng.uniform(0, 360, n).astype(np.float32),
                "rsquared": rng.uniform(0, 1, n).astype(np.float32),
                "size": rng.uniform(0.1, 5, n).astype(np.float32)},
        "roi": _things_fmri_rois(rng),
    })


# -- TVSD ---------------------------------------------------------------------------------
def _write_tvsd(berg_dir, monkey, components, features, rng, dtype) -> None:
    paths = tvsd_paths(berg_dir, monkey)
    e, t = TVSD_ELECTRODES, TVSD_TIMES
    save_npy_dict(paths["weights"], _head(features, rng, components, 22248, e * t, dtype))
    v4 = int(rng.integers(200, 300))
    it = int(rng.integers(150, 250))
    assignments = np.repeat(np.arange(3, dtype=np.int64), [e - v4 - it, v4, it])
    rng.shuffle(assignments)  # not contiguous blocks
    labels = list(TVSD_ROIS) if monkey == "N" else np.asarray(TVSD_ROIS, dtype=str)
    save_npy_dict(paths["metadata"], {
        "utah-array": {"times": np.round(-0.1 + 0.001 * np.arange(t), 6),
                       "electrode_order": rng.permutation(e).astype(np.int64) + 1,
                       "monkey_id": monkey, "n_electrodes": e},
        "roi": {"roi_assignments": assignments, "roi_labels": labels},
        "encoding_model": {
            "test_avg_img_files": np.asarray([f"test_{i:03d}.jpg" for i in range(100)], dtype=str),
            "SNR": rng.uniform(0, 8, (4, e)).astype(np.float32),
            "SNR_max": rng.uniform(0, 10, e).astype(np.float32),
            "oracle": rng.uniform(0, 1, e).astype(np.float32),
            "ncsnr": rng.uniform(0, 1, (e, t)).astype(np.float32),
            "noise_ceiling": rng.uniform(0, 100, (e, t)).astype(np.float32)},
    })


# -- fsaverage (AlexNet) ------------------------------------------------------------------
def _write_fsaverage(paths, components, features, rng, dtype) -> None:
    n = FSAVERAGE_VERTICES
    save_npy_dict(paths["weights"], {"scaler_param": random_scaler(features, rng),
                                     "pca_param": random_pca(rng, components, 9000, features.shape[1]),
                                     "lh_reg_param": _cast_regression(random_regression(rng, n, components), dtype),
                                     "rh_reg_param": _cast_regression(random_regression(rng, n, components), dtype)})

    def rois(left: bool) -> dict[str, np.ndarray]:
        found = {}
        for index, name in enumerate(FSAVERAGE_ROIS):
            # nsdgeneral is the large visual mask; a few ROIs are empty (in the left hemisphere only, some)
            size = 0 if index % 7 == 4 or (left and index % 6 == 2) else int(rng.integers(100, 2500))
            size = 15000 if name == "nsdgeneral" else size
            found[name] = np.sort(rng.choice(n, size, replace=False)).astype(np.int64)
        return found
    image_ids = np.sort(rng.permutation(73000)[:10000])
    accuracy = {f"{h}_{key}_{split}": rng.uniform(0, 0.6, n).astype(np.float32)
                for h in ("lh", "rh") for key in ("correlation", "r2", "noise_ceiling", "explained_variance")
                for split in ("nsdcore", "nsdsynthetic")}
    save_npy_dict(paths["metadata"], {
        "fmri": {"lh_ncsnr": rng.uniform(0, 1, n).astype(np.float32), "rh_ncsnr": rng.uniform(0, 1, n).astype(np.float32),
                 "lh_fsaverage_rois": rois(left=True), "rh_fsaverage_rois": rois(left=False)},
        "encoding_models": {"train_img_num": image_ids[:9000], "val_img_num": image_ids[9000:9485],
                            "test_img_num": image_ids[9485:], **accuracy},
    })
