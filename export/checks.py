"""The export's checks of a written graph against the torch reference; what they compare and
their tolerances are described in parity.py."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ExportError
from .onnx_graph import INPUT_NAME, resize_session
from .parity import (NON_SQUARE_PROBE_SIZES, RESIZE_PROBE_IMAGES, RESIZE_PROBE_SIZES, network_problems,
                     resize_problems, resize_stats)


def check_resize(graph_path: Path, target: tuple[int, int] | int, what: str) -> dict[str, dict]:
    """The graph's own resize nodes against torchvision's resize to ``target`` ((h, w), or an int:
    the shorter side, then also on non-square images), at every probe size; raises ExportError
    naming ``what`` when one is outside the tolerance."""
    from .synthetic import synthetic_images
    from .torch_reference import torchvision_resize
    session = resize_session(graph_path)
    shapes = [(size, size) for size in RESIZE_PROBE_SIZES]
    shapes += list(NON_SQUARE_PROBE_SIZES) if isinstance(target, int) else []
    results = {}
    for height, width in shapes:
        images = np.ascontiguousarray(synthetic_images(RESIZE_PROBE_IMAGES, max(height, width),
                                                       seed=height)[:, :, :height, :width])
        label = str(height) if height == width else f"{height}x{width}"
        found = session.run(None, {INPUT_NAME: images})[0]
        expected = torchvision_resize(images, target)
        if found.shape != expected.shape:
            raise ExportError(f"{what} is refused at image size {label}: it resizes to {list(found.shape[2:])}, "
                              f"torchvision to {list(expected.shape[2:])}")
        stats = resize_stats(found, expected)
        refuse_if(resize_problems(stats), what, label)
        results[f"size_{label}"] = stats
    return results


def refuse_network(record: dict, what: str, size: int) -> None:
    refuse_if(network_problems(record), what, size)


def refuse_if(problems: list[str], what: str, size: int) -> None:
    if problems:
        raise ExportError(f"{what} is refused at image size {size}: " + "; ".join(problems))
