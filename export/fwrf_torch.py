"""Torch reference of NEST's fwRF pipeline (`fmri-nsd-fwrf`), as upstream runs it.

The module names and parameter shapes match the upstream checkpoints so that
``load_state_dict(..., strict=True)`` accepts ``best_params['enc']`` and
``best_params['fwrfs'][subject]`` of real toolkit files. The forward passes follow
upstream's order of operations (tensordot over space, concatenation, bmm), which makes
this an independent reference for the ONNX graphs built in ``fwrf_onnx``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .torch_reference import torchvision_resize

INPUT_SIZE = 227
BN_EPS = 1e-5
BN_MOMENTUM = 0.25


def psi(u: torch.Tensor) -> torch.Tensor:
    """fwRF nonlinearity ln(1 + |u|) * tanh(u)."""
    return torch.log1p(torch.abs(u)) * torch.tanh(u)


class TrunkBlock(nn.Module):
    """BatchNorm -> Dropout2d -> 3x3 conv (padding 1) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.drop1 = nn.Dropout2d(p=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv1(self.drop1(self.bn1(x))))


class EncoderTrunk(nn.Module):
    """The ``enc.*`` part of the encoder (registration order as upstream)."""

    def __init__(self):
        super().__init__()
        self.conv3 = nn.Conv2d(192, 128, kernel_size=3, stride=1, padding=0)
        self.bn1 = nn.BatchNorm2d(192, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.drop1 = nn.Dropout2d(p=0.5)
        self.conv4a = TrunkBlock(128, 128)
        self.conv5a = TrunkBlock(128, 128)
        self.conv6a = TrunkBlock(128, 128)
        self.conv4b = TrunkBlock(128, 128)
        self.conv5b = TrunkBlock(128, 128)
        self.conv6b = TrunkBlock(128, 64)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


class FwrfEncoder(nn.Module):
    """AlexNet-like encoder returning the three feature groups G0, G1, G2 the readout uses."""

    def __init__(self, mu: np.ndarray | None = None):
        super().__init__()
        mean = torch.zeros(1, 3, 1, 1) if mu is None else torch.from_numpy(np.array(mu, np.float32))
        self.mu = nn.Parameter(mean.reshape(1, 3, 1, 1), requires_grad=False)
        self.pre = nn.Module()
        self.pre.conv1 = nn.Sequential(nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
                                       nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2))
        self.pre.conv2 = nn.Sequential(nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU())
        self.enc = EncoderTrunk()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x - self.mu  # before conv1's zero padding: padded pixels equal the mean colour
        c1 = self.pre.conv1(x)
        y = self.pre.conv2(c1)
        e = self.enc
        c3 = torch.relu(e.conv3(e.drop1(e.bn1(y))))
        c4a = e.conv4a(c3)
        c4b = e.conv4b(c4a)
        pooled = e.pool1(c4b)
        c5a = e.conv5a(pooled)
        c5b = e.conv5b(c5a)
        c6a = e.conv6a(c5b)
        c6b = e.conv6b(c6a)
        return [torch.cat([c1, y], dim=1),
                torch.cat([c3, c4a[:, :64], c4b[:, :64]], dim=1),
                torch.cat([c5a[:, :64], c5b[:, :64], c6a[:, :64], c6b], dim=1)]


class FwrfReadout(nn.Module):
    """Per-voxel softmax-pooled receptive fields over the three feature groups."""

    GRID_SIZES = (27, 25, 13)

    def __init__(self, voxels: int):
        super().__init__()
        self.rf0 = nn.Parameter(torch.zeros(voxels, 27, 27))
        self.rf1 = nn.Parameter(torch.zeros(voxels, 25, 25))
        self.rf2 = nn.Parameter(torch.zeros(voxels, 13, 13))
        self.w = nn.Parameter(torch.zeros(voxels, 768))
        self.b = nn.Parameter(torch.zeros(voxels))

    def forward(self, groups: list[torch.Tensor]) -> torch.Tensor:
        pooled = []
        for rf, features in zip((self.rf0, self.rf1, self.rf2), groups):
            g = torch.softmax(rf.reshape(rf.shape[0], -1), dim=1)                   # [V, S]
            f = psi(features.reshape(features.shape[0], features.shape[1], -1))     # [N, C, S]
            pooled.append(torch.tensordot(g, f, dims=[[1], [2]]))                  # [V, N, C]
        phi = psi(torch.cat(pooled, dim=2))                                         # [V, N, 768]
        out = torch.bmm(phi, self.w[:, :, None])                                    # [V, N, 1]
        return out[:, :, 0].t() + self.b[None, :]                                   # [N, V]


class FwrfReference(nn.Module):
    """Upstream's inference for one ROI: one (encoder, readout) pair, two for split ROIs."""

    def __init__(self, parts: list[tuple[FwrfEncoder, FwrfReadout]]):
        super().__init__()
        self.encoders = nn.ModuleList(e for e, _ in parts)
        self.readouts = nn.ModuleList(r for _, r in parts)

    @classmethod
    def from_checkpoints(cls, checkpoints: list[dict], subject: int) -> "FwrfReference":
        parts = []
        for checkpoint in checkpoints:
            readout_state = checkpoint["best_params"]["fwrfs"][subject]
            encoder = FwrfEncoder()
            encoder.load_state_dict(_as_tensors(checkpoint["best_params"]["enc"]), strict=True)
            readout = FwrfReadout(len(readout_state["b"]))
            readout.load_state_dict(_as_tensors(readout_state), strict=True)
            parts.append((encoder, readout))
        return cls(parts).eval()

    @torch.no_grad()
    def forward(self, images: np.ndarray, batch_size: int = 100) -> np.ndarray:
        """Responses [N, V] for integer images [N, 3, S, S], in upstream's batches of 100: float32
        as upstream, or float64 for a ``torch_reference.float64_copy`` of the reference."""
        dtype = self.encoders[0].mu.dtype
        outputs = []
        for start in range(0, len(images), batch_size):
            x = preprocess(images[start:start + batch_size], dtype)
            outputs.append(torch.cat([readout(encoder(x)) for encoder, readout
                                      in zip(self.encoders, self.readouts)], dim=1))
        values = torch.cat(outputs).numpy()
        return values.astype(np.float32) if dtype == torch.float32 else values


def preprocess(images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchvision Resize((227, 227)) on the integer tensor, then /255 (in float32 upstream)."""
    return torch.from_numpy(torchvision_resize(images, (INPUT_SIZE, INPUT_SIZE))).to(dtype) / 255


def _as_tensors(state: dict) -> dict:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in state.items()}
