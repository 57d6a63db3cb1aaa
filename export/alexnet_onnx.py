"""The AlexNet backbone graph: uint8 images [N, 3, S, S] -> features float32 [N, 205672].

Upstream's transform (the same ImageClassification transform as the ViT's, see
vit_onnx.preprocessing_graph) in front of torchvision's alexnet, cut at upstream's eight return
nodes. Trained and untrained backbones are the same graph with different weights.
"""
from __future__ import annotations

import onnx

from .vit_onnx import merged_backbone

# positions of upstream's return nodes (alexnet_torch.FEATURE_NODES) in the two Sequentials
_FEATURE_LAYERS = (2, 5, 7, 9, 12)
_CLASSIFIER_LAYERS = (2, 5, 6)


def _export_features(model):
    """torchvision's alexnet run layer by layer, keeping the outputs of the return nodes.

    The reference (alexnet_torch.AlexNetFeatures) takes the same tensors with torchvision's
    feature extractor; this plain module is what torch.onnx exports. Dropout is the identity in
    eval mode, and the in-place ReLUs only overwrite tensors no later layer reads again."""
    import torch
    from torch import nn

    class ExportFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.alexnet = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            kept, hidden = [], pixels
            for index, layer in enumerate(self.alexnet.features):
                hidden = layer(hidden)
                if index in _FEATURE_LAYERS:
                    kept.append(hidden.flatten(1))
            hidden = torch.flatten(self.alexnet.avgpool(hidden), 1)
            for index, layer in enumerate(self.alexnet.classifier):
                hidden = layer(hidden)
                if index in _CLASSIFIER_LAYERS:
                    kept.append(hidden)
            return torch.cat(kept, dim=1)

    return ExportFeatures().eval()


def backbone_model(model, portable: bool = False) -> onnx.ModelProto:
    """The full AlexNet backbone graph (preprocessing + feature extractor), in standard ONNX
    operators; ``portable`` also resizes without Resize's antialias (onnx_graph.resized_pixels)."""
    return merged_backbone(_export_features(model), "alexnet/", fuse=False, portable=portable)
