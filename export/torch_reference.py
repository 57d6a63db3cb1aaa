"""Pieces the torch references of every pipeline share: torchvision's resize and float64 copies."""
from __future__ import annotations

import copy

import numpy as np
import torch
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
