"""What a backbone file declares: the ``Backbone`` every file in backbones/ fills in and registers.

A backbone's facts are fields (its name in models_manifest.json, its title, its return nodes,
its transform's parameters, its parity tolerance, where its default weights come from); what
needs torch is a method (build the network, its reference, its transform, its graph, its
weights' provenance), importing torch when called, so that this package, and the tolerances
the torch-free tests read, import with numpy alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# End to end (images -> responses, the resize's rounding included): what a backbone's models must
# hold on the project's synthetic toolkits, at the transform's native size (no resize) and resized.
# Held by the tests, not an export gate (parity.py says why).
Tolerance = dict[str, dict[str, float]]


@dataclass(frozen=True)
class ImageClassificationPreprocessing:
    """torchvision's ImageClassification transform, as upstream applies it to uint8 tensors: the
    shorter side resized to ``resize`` (bilinear, antialias), the centre ``crop`` x ``crop``,
    /255, then normalised by ``mean`` and ``std`` (the ``statistics`` of a dataset)."""
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    statistics: str = "ImageNet"

    def steps(self) -> list[str]:
        """The transform in words, for the contracts of the graphs that start with it."""
        return [f"resize so that the shorter side is {self.resize} and the longer int({self.resize} * long / short) "
                "(bilinear, antialias, half-pixel centres, as torchvision's Resize on integer tensors), rounded "
                "half to even to integers",
                f"centre crop {self.crop} x {self.crop} at offsets int(round((side - {self.crop}) / 2))",
                "divide by 255",
                f"subtract the {self.statistics} mean {self.mean}, divide by the std {self.std}"]


@dataclass(frozen=True)
class FeatureNode:
    """One of upstream's return nodes: its output for one image has ``shape``; flattened in C
    order, the nodes' outputs concatenated in order are the backbone's features."""
    node: str
    shape: tuple[int, ...]
    meaning: str | None = None

    def layout(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"node": self.node, "shape": list(self.shape)}
        return entry if self.meaning is None else {**entry, "meaning": self.meaning}


@dataclass(frozen=True)
class Backbone:
    """One backbone, as upstream builds and runs it. Subclasses implement the methods.

    ``name``: its key in models_manifest.json's "backbones" (and in ``--weights NAME=PATH``);
    ``node_prefix``: the prefix of the exported extractor's values in the graph;
    ``fuse``: whether the exported graph is rewritten with onnxruntime's fused kernels
    (backbone_graph.fuse_for_onnxruntime; never in a portable export);
    ``takes_weights``: whether a weights file may be given (an untrained backbone takes none)."""
    name: str
    title: str
    nodes: tuple[FeatureNode, ...]
    preprocessing: ImageClassificationPreprocessing
    end_to_end_tolerance: Tolerance
    node_prefix: str
    fuse: bool = False
    takes_weights: bool = True

    @property
    def features(self) -> int:
        return sum(math.prod(node.shape) for node in self.nodes)

    def layout(self) -> list[dict[str, Any]]:
        """The features' layout, as the backbone's contract states it."""
        return [node.layout() for node in self.nodes]

    def network(self, weights_path: str | Path | None):
        """The torch network with upstream's weights, or those of the state dict at ``weights_path``."""
        raise NotImplementedError

    def reference(self, network):
        """Upstream's feature extractor over ``network``: normalised pixels -> [N, features]."""
        from ..torch_reference import ReturnNodeFeatures
        return ReturnNodeFeatures(network, [node.node for node in self.nodes]).eval()

    def transform(self):
        """Upstream's transform object (torchvision's ImageClassification), as its loader uses it."""
        raise NotImplementedError

    def export_module(self, network):
        """A torch module computing what ``reference`` computes, written for torch.onnx."""
        raise NotImplementedError

    def graph(self, network, portable: bool = False):
        """The backbone graph: uint8 images [N, 3, S, S] -> features float32 [N, features]."""
        from ..backbone_graph import merged_backbone
        return merged_backbone(self.export_module(network), self.node_prefix, self.preprocessing,
                               fuse=self.fuse and not portable, portable=portable)

    def provenance(self, weights_path: str | Path | None, network) -> dict[str, Any]:
        """Where the weights came from, for bundle.json."""
        raise NotImplementedError

    # -- random stand-in weights, for the synthetic toolkits (nest-rt synthetic-toolkit) --------
    @property
    def random_weights_name(self) -> str:
        """The file name of the random stand-in weights beside a synthetic toolkit."""
        return f"{self.name}_synthetic.pth"

    def random_state_dict(self, seed: int) -> dict:
        """A random state dict of the network's architecture, what ``network(weights_path)`` loads:
        the synthetic toolkits' stand-in for the real weights (same seed, same tensors)."""
        raise NotImplementedError(f"backbone {self.name!r} has no random_state_dict: the synthetic toolkits "
                                  "cannot stand in for its weights")

    def write_random_weights(self, folder: str | Path, seed: int) -> Path | None:
        """``random_state_dict(seed)`` saved as ``folder / random_weights_name`` (what
        ``--weights NAME=PATH`` takes); None for a backbone that takes no weights file."""
        if not self.takes_weights:
            return None
        import torch
        path = Path(folder) / self.random_weights_name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(self.random_state_dict(seed), path)
        return path


def file_provenance(weights_path: str | Path) -> dict[str, Any]:
    """The provenance of a weights file given by path: where it is and its sha256."""
    from nest_rt.bundle import sha256_file
    return {"source": str(Path(weights_path).resolve()), "sha256": sha256_file(Path(weights_path))}


def torchvision_network(build, default_weights, weights_path: str | Path | None):
    """A torchvision network in eval mode: ``build(weights=default_weights)`` (torchvision's
    download or cache, as upstream gets it), or ``build()`` given the state dict at
    ``weights_path`` (loaded with ``weights_only``: tensors, nothing else unpickled)."""
    import torch
    if weights_path is None:
        return build(weights=default_weights).eval()
    model = build()
    model.load_state_dict(torch.load(Path(weights_path), map_location="cpu", weights_only=True), strict=True)
    return model.eval()
