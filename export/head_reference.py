"""Reference of the linear models' heads, as upstream runs them: scikit-learn's StandardScaler ->
PCA -> LinearRegression rebuilt from a toolkit's arrays (reference_head), and the same maths in
float64 (float64_head), the yardstick the parity checks measure the folded head graph against
(head_graph.py). The same for every backbone; never used by the runtime.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _fitted(estimator, params: dict, keys: list[str]):
    for key in keys:
        if key in params:
            setattr(estimator, key, params[key])
    return estimator


def sklearn_scaler(params: dict):
    from sklearn.preprocessing import StandardScaler
    return _fitted(StandardScaler(), params, ["mean_", "var_", "scale_", "n_features_in_", "n_samples_seen_"])


def sklearn_pca(params: dict):
    from sklearn.decomposition import PCA
    pca = PCA(n_components=len(params["components_"]))
    return _fitted(pca, params, ["components_", "mean_", "explained_variance_", "explained_variance_ratio_",
                                 "singular_values_", "n_components_", "n_samples_", "noise_variance_",
                                 "n_features_in_"])


def sklearn_regression(params: dict):
    from sklearn.linear_model import LinearRegression
    return _fitted(LinearRegression(), params, ["coef_", "intercept_", "n_features_in_"])


def reference_components(features: np.ndarray, scaler_params: dict, pca_params: dict,
                         used: int) -> np.ndarray:
    """StandardScaler -> PCA -> first ``used`` components (250 upstream; the legacy PCA file
    holds 1000), cast to float32, in upstream's order of operations."""
    scaled = sklearn_scaler(scaler_params).transform(features)
    return sklearn_pca(pca_params).transform(scaled)[:, :used].astype(np.float32)


def reference_regression(components: np.ndarray, params: dict, rows=None) -> np.ndarray:
    if rows is not None:
        params = {**params, "coef_": params["coef_"][rows], "intercept_": params["intercept_"][rows]}
    return sklearn_regression(params).predict(components).astype(np.float32)


def float64_components(features: np.ndarray, scaler_params: dict, pca_params: dict, used: int,
                       block: int = 38400) -> np.ndarray:
    """((f - mean) / scale - pca_mean) @ components[:used].T in float64: the head's maths without
    float32 rounding, summed over blocks of features (a float64 copy of all components would be
    0.9 GB)."""
    features = np.asarray(features, np.float64)
    components = np.zeros((len(features), used))
    for start in range(0, features.shape[1], block):
        part = slice(start, start + block)
        scaled = (features[:, part] - np.asarray(scaler_params["mean_"][part], np.float64)) \
            / np.asarray(scaler_params["scale_"][part], np.float64)
        centred = scaled - np.asarray(pca_params["mean_"][part], np.float64)
        components += centred @ np.asarray(pca_params["components_"][:used, part], np.float64).T
    return components


def float64_regression(components: np.ndarray, params: dict) -> np.ndarray:
    return components @ np.asarray(params["coef_"], np.float64).T + np.asarray(params["intercept_"], np.float64)


def _per_pca(pcas: list[dict], compute) -> list:
    """compute(pca) for each block's PCA, computed once per distinct PCA (blocks may share one)."""
    done: dict[int, Any] = {}
    for pca in pcas:
        if id(pca) not in done:
            done[id(pca)] = compute(pca)
    return [done[id(pca)] for pca in pcas]


def reference_head(features: np.ndarray, scaler: dict, pcas: list[dict], regressions: list[dict]) -> np.ndarray:
    """[N, outputs]: for each regression block, StandardScaler -> its PCA -> float32 ->
    LinearRegression -> float32, as upstream; the blocks' outputs side by side."""
    used = np.shape(regressions[0]["coef_"])[1]
    components = _per_pca(pcas, lambda pca: reference_components(features, scaler, pca, used))
    return np.concatenate([reference_regression(c, block) for c, block in zip(components, regressions)], axis=1)


def float64_head(features: np.ndarray, scaler: dict, pcas: list[dict], regressions: list[dict]) -> np.ndarray:
    """reference_head's maths in float64, without float32 rounding."""
    used = np.shape(regressions[0]["coef_"])[1]
    components = _per_pca(pcas, lambda pca: float64_components(features, scaler, pca, used))
    return np.concatenate([float64_regression(c, block) for c, block in zip(components, regressions)], axis=1)
