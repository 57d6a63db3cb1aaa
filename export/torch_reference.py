"""Pieces the torch references of every pipeline share: torchvision's resize, float64 copies, and
a backbone's features as upstream extracts them (return nodes, its transform, batches of 100)."""
from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.transforms import functional as tvf


def torchvision_resize(images: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """uint8 images resized exactly as upstream resizes its integer tensors (torchvision's
    bilinear antialiased Resize: float32 interpolation, rounded, cast back), to ``size`` (h, w)
    or, for an int, with the shorter side to ``size``."""
    target = [size] if isinstance(size, int) else list(size)
    return tvf.resize(torch.from_numpy(np.ascontiguousarray(images)), target, antialias=True).numpy()


def float64_copy(module: torch.nn.Module) -> torch.nn.Module:
    """The same module with every parameter and buffer in float64: upstream's maths without
    float32 rounding, the yardstick the parity checks measure float32 error against."""
    return copy.deepcopy(module).double().eval()


class ReturnNodeFeatures(nn.Module):
    """Images normalised as upstream -> [N, F]: the outputs of a network's return nodes, from
    torchvision's feature extractor as upstream builds it, each flattened in C order and
    concatenated in the nodes' order (the reference every backbone graph is checked against)."""

    def __init__(self, network: nn.Module, nodes: Sequence[str]):
        super().__init__()
        self.nodes = list(nodes)
        self.extractor = create_feature_extractor(network, return_nodes=self.nodes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.extractor(pixels)
        return torch.cat([outputs[name].flatten(1) for name in self.nodes], dim=1)


@torch.no_grad()
def reference_features(features: nn.Module, images: np.ndarray, transform, batch_size: int = 100) -> np.ndarray:
    """``features`` of ``images`` after upstream's ``transform`` (a torchvision weights'
    ``transforms()``, see Backbone.transform), in batches of 100 as upstream."""
    return np.concatenate([features(transform(torch.from_numpy(np.asarray(images[start:start + batch_size]))))
                           .numpy() for start in range(0, len(images), batch_size)])


@torch.no_grad()
def float64_features(features64: nn.Module, images: np.ndarray, transform) -> np.ndarray:
    """Upstream's transform and features in float64 (``features64`` a float64_copy), for images
    whose side is already the transform's resize size (so no resize): crop, /255, normalise, extract."""
    if images.shape[-2:] != (transform.resize_size[0],) * 2:
        raise ValueError(f"float64 features need {transform.resize_size[0]}-pixel images, got {images.shape}")
    cropped = tvf.center_crop(torch.from_numpy(np.ascontiguousarray(images)), transform.crop_size)
    pixels = tvf.normalize(cropped.to(torch.float64) / 255, transform.mean, transform.std)
    return features64(pixels).numpy()
