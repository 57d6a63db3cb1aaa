"""AlexNet, trained and untrained: the backbones of BERG's ``*-alexnet`` and ``*-alexnet_untrained``
models. One file for both: they are the same network, transform, graph and tolerance; only where
the weights come from differs.

Upstream runs torchvision's ``alexnet`` and takes the outputs of eight of its modules (the return
nodes below), each flattened in C order and concatenated: 205,672 values per 224 x 224 image,
after the same ImageClassification transform as the ViT's (resize 256, crop 224, ImageNet
normalisation; each family is checked against its own transform object).

- ``alexnet``: the ImageNet weights (``AlexNet_Weights.IMAGENET1K_V1``, torchvision's DEFAULT),
  from the torch hub cache as upstream finds them, or a torchvision state dict given with
  ``--weights alexnet=PATH`` (alias ``--alexnet-weights``).
- ``alexnet_untrained``: torch's default initialisation drawn right after
  ``torch.manual_seed(20200220)``, as upstream's loader builds it. No file stores these weights;
  they depend on the torch version, which the exporter records with a checksum of the weights.
  Unlike upstream's loader, building them leaves the caller's random state as it was.

The graph: torchvision's alexnet run layer by layer, keeping the return nodes' outputs, in
standard ONNX operators (no fused kernels).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .base import Backbone, FeatureNode, ImageClassificationPreprocessing, file_provenance, torchvision_network
from .registry import register

UNTRAINED_SEED = 20200220
TRAINED_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"  # AlexNet_Weights.IMAGENET1K_V1 in the torch hub cache

# upstream's return nodes, in its order: pooled conv1, pooled conv2, ReLU(conv3), ReLU(conv4),
# pooled conv5, ReLU(fc6), ReLU(fc7), fc8; with each one's output shape for one 224 x 224 image
NODES = (FeatureNode("features.2", (64, 27, 27)), FeatureNode("features.5", (192, 13, 13)),
         FeatureNode("features.7", (384, 13, 13)), FeatureNode("features.9", (256, 13, 13)),
         FeatureNode("features.12", (256, 6, 6)), FeatureNode("classifier.2", (4096,)),
         FeatureNode("classifier.5", (4096,)), FeatureNode("classifier.6", (1000,)))
# their positions in alexnet's two Sequentials (features, classifier), for the exported module
_FEATURE_LAYERS = (2, 5, 7, 9, 12)
_CLASSIFIER_LAYERS = (2, 5, 6)

# AlexNet's 11x11 stride-4 conv1 and its max pools carry the resize's 1-grey-level differences
# further than the ViT's patch embedding: upsampled 224 -> 256, up to 1.09e-3 (correlation
# 0.99994) on the trained stand-in's fsaverage head; 300 -> 256 up to 1.4e-4.
TOLERANCE = {"native": {"relative_error": 1e-5, "min_correlation": 0.99999},  # S = 256: no resize
             "resized": {"relative_error": 2e-3, "min_correlation": 0.9999}}


# ImageNet-trained AlexNet's activations are far larger than a default initialisation's (its
# logits reach tens); scaling conv1 of the random stand-in raises every later activation, so that
# the synthetic toolkits test the graphs at two scales (the stand-in and the untrained backbone).
_TRAINED_CONV1_SCALE = 30.0


class AlexNet(Backbone):
    """The trained AlexNet: torchvision's ImageNet weights, or a state dict given by path."""

    def network(self, weights_path: str | Path | None):
        from torchvision.models import AlexNet_Weights, alexnet
        return torchvision_network(alexnet, AlexNet_Weights.DEFAULT, weights_path)

    def transform(self):
        from torchvision.models import AlexNet_Weights
        return AlexNet_Weights.IMAGENET1K_V1.transforms()

    def export_module(self, network):
        return _export_features(network)

    def provenance(self, weights_path: str | Path | None, network) -> dict[str, Any]:
        record: dict[str, Any] = {"weights_sha256": weights_checksum(network)}
        if weights_path is None:
            return {**record, "source": f"torchvision AlexNet_Weights.IMAGENET1K_V1 ({TRAINED_WEIGHTS_FILE})"}
        return {**record, **file_provenance(weights_path)}

    def random_state_dict(self, seed: int) -> dict:
        """A random stand-in for the ImageNet weights: drawn under another seed than upstream's
        untrained one, with conv1 scaled by _TRAINED_CONV1_SCALE, so that the trained stand-in and
        the untrained backbone differ in values and scale. Leaves the caller's random state as it was."""
        import torch
        from torchvision.models import alexnet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            state = alexnet().state_dict()
        state["features.0.weight"] *= _TRAINED_CONV1_SCALE
        return state


class UntrainedAlexNet(AlexNet):
    """AlexNet with torch's default initialisation under upstream's seed (takes no weights file)."""

    def network(self, weights_path: str | Path | None = None):
        """Built on the CPU generator in construction order as ``torch.manual_seed(20200220);
        alexnet(weights=None)`` does, without changing the caller's random state."""
        import torch
        from torchvision.models import alexnet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(UNTRAINED_SEED)
            return alexnet(weights=None).eval()

    def provenance(self, weights_path: str | Path | None, network) -> dict[str, Any]:
        import torch
        return {"weights_sha256": weights_checksum(network),
                "source": (f"torch default initialisation after torch.manual_seed({UNTRAINED_SEED}), "
                           "built as torchvision alexnet(weights=None)"),
                "torch": torch.__version__}


_SHARED = dict(nodes=NODES, preprocessing=ImageClassificationPreprocessing(resize=256, crop=224),
               end_to_end_tolerance=TOLERANCE, node_prefix="alexnet/")
ALEXNET = register(AlexNet(name="alexnet", title="AlexNet", **_SHARED))
ALEXNET_UNTRAINED = register(UntrainedAlexNet(name="alexnet_untrained", title="untrained AlexNet",
                                              takes_weights=False, **_SHARED))


def weights_checksum(model) -> str:
    """sha256 of the state dict's tensors (name, dtype, shape and bytes, in state-dict order):
    the same weights give the same checksum on any machine and torch version."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _export_features(model):
    """torchvision's alexnet run layer by layer, keeping the outputs of the return nodes.

    The reference (Backbone.reference) takes the same tensors with torchvision's feature
    extractor; this plain module is what torch.onnx exports. Dropout is the identity in eval
    mode, and the in-place ReLUs only overwrite tensors no later layer reads again."""
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
