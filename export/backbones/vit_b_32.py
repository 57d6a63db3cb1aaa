"""ViT-B/32: the backbone of NEST's and BERG's EEG, MEG, fsaverage, THINGS-fMRI and TVSD models.

Upstream runs torchvision's ``vit_b_32`` and takes the outputs of its 12 encoder blocks (the
class token, then the 7 x 7 patches row by row, 768 dimensions each), flattened and concatenated:
460,800 features per image, after torchvision's ImageClassification transform (resize 256,
crop 224, ImageNet normalisation).

Weights: torchvision's ``ViT_B_32_Weights.IMAGENET1K_V1`` (its DEFAULT), from the torch hub cache
as upstream finds them (downloaded there if missing), or a torchvision state dict given with
``--weights vit_b_32=PATH`` (alias ``--vit-weights``).

The graph: the reference's maths with each block's attention written out for export
(_ExportFeatures), then rewritten with onnxruntime's fused attention and GELU kernels (fuse; the
fusions saved about 3 % of the fp32 time) unless the export is portable.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Backbone, FeatureNode, ImageClassificationPreprocessing, file_provenance, torchvision_network
from .registry import register

DEFAULT_WEIGHTS = "torchvision ViT_B_32_Weights.IMAGENET1K_V1 (vit_b_32-d86f8d99.pth)"


class VitB32(Backbone):
    def network(self, weights_path: str | Path | None):
        from torchvision.models import ViT_B_32_Weights, vit_b_32
        return torchvision_network(vit_b_32, ViT_B_32_Weights.DEFAULT, weights_path)

    def transform(self):
        from torchvision.models import ViT_B_32_Weights
        return ViT_B_32_Weights.IMAGENET1K_V1.transforms()

    def export_module(self, network):
        return _export_features(network)

    def provenance(self, weights_path: str | Path | None, network) -> dict[str, Any]:
        return {"source": DEFAULT_WEIGHTS} if weights_path is None else file_provenance(weights_path)

    def random_state_dict(self, seed: int) -> dict:
        """torchvision's default initialisation of vit_b_32 after ``torch.manual_seed(seed)`` (on
        the global generator, as the synthetic toolkits have always drawn it)."""
        import torch
        from torchvision.models import vit_b_32
        torch.manual_seed(seed)
        return vit_b_32().state_dict()


VIT_B_32 = register(VitB32(
    name="vit_b_32", title="ViT-B/32", node_prefix="vit/", fuse=True,
    nodes=tuple(FeatureNode(f"encoder.layers.encoder_layer_{index}.add_1", (50, 768),
                            "class token, then the 7 x 7 patches row by row; 768 dimensions each")
                for index in range(12)),
    preprocessing=ImageClassificationPreprocessing(resize=256, crop=224),
    # Upsampling small images (224 -> 256) creates many near ties: up to 6.6e-4, correlation 0.99997.
    end_to_end_tolerance={"native": {"relative_error": 1e-5, "min_correlation": 0.99999},  # S = 256: no resize
                          "resized": {"relative_error": 1e-3, "min_correlation": 0.9999}}))


def _export_features(vit):
    """torchvision's vit_b_32 as a feature extractor, with its attention written out for export.

    Each encoder block computes what torchvision's EncoderBlock computes, with the block's own
    modules and weights, but its attention is the packed in-projection followed by
    scaled_dot_product_attention on [N, heads, tokens, head_dim]. torch.onnx exports that as a
    pattern onnxscript's onnxruntime fusions recognise (backbone_graph.fuse_for_onnxruntime);
    torchvision's nn.MultiheadAttention exports as 8 Transposes per block that no fusion matches
    (97 Transposes, about 10 % of the int8 backbone's time). The reference (Backbone.reference,
    torchvision's feature extractor unchanged) is what the exported graph is compared with."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ExportFeatures(nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            n = pixels.shape[0]
            # torchvision's own patch embedding (Conv + flatten, [N, 49, 768]); private, but it is
            # the code the reference runs, so a torchvision change shows in the parity tests
            tokens = self.vit._process_input(pixels)
            hidden = torch.cat([self.vit.class_token.expand(n, -1, -1), tokens], dim=1)
            hidden = hidden + self.vit.encoder.pos_embedding
            blocks = []
            for layer in self.vit.encoder.layers:
                attention = layer.self_attention
                width, heads = hidden.shape[2], attention.num_heads
                qkv = (F.linear(layer.ln_1(hidden), attention.in_proj_weight, attention.in_proj_bias)
                       .reshape(n, -1, 3, heads, width // heads).permute(2, 0, 3, 1, 4))
                attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
                hidden = hidden + attention.out_proj(attended.transpose(1, 2).reshape(n, -1, width))
                hidden = hidden + layer.mlp(layer.ln_2(hidden))
                blocks.append(hidden.flatten(1))
            return torch.cat(blocks, dim=1)

    return ExportFeatures().eval()
