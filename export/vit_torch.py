"""Torch + scikit-learn reference of NEST's ViT-B/32 pipelines, as upstream runs them.

EEG (`eeg-things_eeg_2-vit_b_32`) and fsaverage (`fmri-nsd_fsaverage-vit_b_32`) share the
backbone: torchvision's vit_b_32, whose 12 encoder-block outputs are flattened and concatenated
(460,800 features per image), then a per-subject scikit-learn StandardScaler -> PCA ->
LinearRegression chain rebuilt from the toolkit's arrays. This module is the independent
reference for the folded ONNX graphs; it is never used by the runtime.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import ViT_B_32_Weights, vit_b_32
from torchvision.models.feature_extraction import create_feature_extractor

FEATURE_NODES = [f"encoder.layers.encoder_layer_{index}.add_1" for index in range(12)]
FEATURES = 12 * 50 * 768  # 460,800


def load_vit(weights_path: str | Path | None) -> nn.Module:
    """vit_b_32 with a torchvision state dict from ``weights_path``, or torchvision's default
    ImageNet weights (downloaded to the torch hub cache, as upstream does) when it is None."""
    if weights_path is None:
        return vit_b_32(weights=ViT_B_32_Weights.DEFAULT).eval()
    model = vit_b_32()
    state = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


class VitFeatures(nn.Module):
    """Images normalised as upstream -> [N, 460800] block outputs in upstream's order."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.extractor = create_feature_extractor(vit, return_nodes=FEATURE_NODES)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        blocks = self.extractor(pixels)
        return torch.cat([blocks[name].flatten(1) for name in FEATURE_NODES], dim=1)


def upstream_transform(images: np.ndarray) -> torch.Tensor:
    """ViT_B_32_Weights.IMAGENET1K_V1.transforms() applied to torch.from_numpy(images)."""
    return ViT_B_32_Weights.IMAGENET1K_V1.transforms()(torch.from_numpy(np.asarray(images)))


@torch.no_grad()
def reference_features(features: nn.Module, images: np.ndarray, batch_size: int = 100,
                       transform=None) -> np.ndarray:
    """``features`` of ``images`` after upstream's transform (``transform``: a torchvision
    weights' ``transforms()``, the ViT's by default), in batches of 100 as upstream."""
    transform = transform or ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    return np.concatenate([features(transform(torch.from_numpy(np.asarray(images[start:start + batch_size]))))
                           .numpy() for start in range(0, len(images), batch_size)])


@torch.no_grad()
def float64_features(features64: nn.Module, images: np.ndarray, transform=None) -> np.ndarray:
    """Upstream's transform and features in float64 (``features64`` a float64_copy), for images
    whose side is already the transform's 256 (so no resize): crop, /255, normalise, extract."""
    from torchvision.transforms import functional as tvf
    transform = transform or ViT_B_32_Weights.IMAGENET1K_V1.transforms()
    if images.shape[-2:] != (transform.resize_size[0],) * 2:
        raise ValueError(f"float64 features need {transform.resize_size[0]}-pixel images, got {images.shape}")
    cropped = tvf.center_crop(torch.from_numpy(np.ascontiguousarray(images)), transform.crop_size)
    pixels = tvf.normalize(cropped.to(torch.float64) / 255, transform.mean, transform.std)
    return features64(pixels).numpy()


# -- scikit-learn heads, rebuilt from the toolkit's arrays as upstream does ---------------------
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
