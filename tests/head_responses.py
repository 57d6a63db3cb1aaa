"""Responses of NEST's EEG and fsaverage heads from backbone features, through the exporter's
head reference (nest_rt_export.head_reference: scikit-learn as upstream runs it). A test helper,
not a test file; the upstream-style reference of every BERG model is berg_reference.py."""
from __future__ import annotations

import numpy as np
from nest_rt_export.head_reference import reference_components, reference_head, reference_regression


def eeg_blocks(weights: dict) -> tuple[list[dict], list[dict]]:
    """(PCA per repetition, regression per repetition) of an EEG head dict: one PCA shared by
    the four regressions (NEST 1.0.0) or one per repetition (current BERG)."""
    pca = weights["pca_param"]
    pcas = [pca] * 4 if "components_" in pca else [pca[f"rep-{r}"] for r in range(1, 5)]
    return pcas, [weights["reg_param"][f"rep-{r}"] for r in range(1, 5)]


def reference_eeg(features: np.ndarray, weights: dict) -> np.ndarray:
    """[N, 4, 63, 140] EEG responses from features and a subject's head dict
    ({'scaler_param', 'pca_param', 'reg_param': {'rep-1'..'rep-4'}})."""
    pcas, regressions = eeg_blocks(weights)
    return reference_head(features, weights["scaler_param"], pcas, regressions).reshape(len(features), 4, 63, 140)


def reference_fsaverage(features: np.ndarray, weights: dict, lh_rows=None, rh_rows=None):
    """(lh [N, |lh_rows|], rh [N, |rh_rows|]) fsaverage responses (all vertices by default)."""
    used = weights["lh_reg_param"]["coef_"].shape[1]
    components = reference_components(features, weights["scaler_param"], weights["pca_param"], used)
    return (reference_regression(components, weights["lh_reg_param"], lh_rows),
            reference_regression(components, weights["rh_reg_param"], rh_rows))
