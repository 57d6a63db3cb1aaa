"""Torch reference of BERG's AlexNet backbones, as upstream builds and runs them.

Both AlexNet backbones are torchvision's ``alexnet``; the features are the outputs of eight of
its modules (upstream's return nodes, below), each flattened in C order and concatenated:
205,672 values per 224 x 224 image.

- ``alexnet``: the ImageNet weights (``AlexNet_Weights.IMAGENET1K_V1``, torchvision's DEFAULT),
  from the torch hub cache as upstream finds them, or from a state dict given by path.
- ``alexnet_untrained``: torch's default initialisation drawn right after
  ``torch.manual_seed(20200220)``, as upstream's loader builds it. No file stores these weights;
  they depend on the torch version, which the exporter records with a checksum of the weights.
  Unlike upstream's loader, building them leaves the caller's random state as it was.

This module is the independent reference for the exported AlexNet graphs; it is never used by
the runtime.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import AlexNet_Weights, alexnet
from torchvision.models.feature_extraction import create_feature_extractor

# upstream's return nodes, in its order: pooled conv1, pooled conv2, ReLU(conv3), ReLU(conv4),
# pooled conv5, ReLU(fc6), ReLU(fc7), fc8
FEATURE_NODES = ["features.2", "features.5", "features.7", "features.9", "features.12",
                 "classifier.2", "classifier.5", "classifier.6"]
# each node's output shape for one 224 x 224 image (features: these flattened and concatenated)
NODE_SHAPES = [[64, 27, 27], [192, 13, 13], [384, 13, 13], [256, 13, 13], [256, 6, 6], [4096], [4096], [1000]]
FEATURES = sum(int(np.prod(shape)) for shape in NODE_SHAPES)
UNTRAINED_SEED = 20200220
TRAINED_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # AlexNet_Weights.IMAGENET1K_V1 in the torch hub cache


def load_alexnet(weights_path: str | Path | None) -> nn.Module:
    """The trained AlexNet: a torchvision state dict from ``weights_path``, or torchvision's
    ImageNet weights (the torch hub cache, downloaded there if missing, as upstream does)."""
    if weights_path is None:
        return alexnet(weights=AlexNet_Weights.DEFAULT).eval()
    model = alexnet()
    model.load_state_dict(torch.load(Path(weights_path), map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def untrained_alexnet() -> nn.Module:
    """AlexNet with torch's default initialisation under upstream's seed, built on the CPU
    generator in construction order as ``torch.manual_seed(20200220); alexnet(weights=None)``
    does, without changing the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        return alexnet(weights=None).eval()


def weights_checksum(model: nn.Module) -> str:
    """sha256 of the state dict's tensors (name, dtype, shape and bytes, in state-dict order):
    the same weights give the same checksum on any machine and torch version."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def provenance(backbone: str, weights_path: str | Path | None, model: nn.Module) -> dict[str, Any]:
    """Where a backbone's weights came from, for bundle.json."""
    from nest_rt.bundle import sha256_file
    record: dict[str, Any] = {"weights_sha256": weights_checksum(model)}
    if backbone == "alexnet_untrained":
        record["source"] = (f"torch default initialisation after torch.manual_seed({UNTRAINED_SEED}), "
                            "built as torchvision alexnet(weights=None)")
        record["torch"] = torch.__version__
    elif weights_path is None:
        record["source"] = f"torchvision AlexNet_Weights.IMAGENET1K_V1 ({TRAINED_WEIGHTS_FILE})"
    else:
        record["source"] = str(Path(weights_path).resolve())
        record["sha256"] = sha256_file(Path(weights_path))
    return record


class AlexNetFeatures(nn.Module):
    """Images normalised as upstream -> [N, 205672] features, from torchvision's feature
    extractor with upstream's return nodes (the reference)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.extractor = create_feature_extractor(model, return_nodes=FEATURE_NODES)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        outputs = self.extractor(pixels)
        return torch.cat([outputs[name].flatten(1) for name in FEATURE_NODES], dim=1)


def upstream_transform():
    """Upstream's AlexNet transform object (the same values as the ViT's; each model family
    is checked against its own)."""
    return AlexNet_Weights.IMAGENET1K_V1.transforms()
