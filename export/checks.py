"""The export's checks of a written graph against the torch reference; what they compare and
their tolerances are described in parity.py."""
from __future__ import annotations

from pathlib import Path

from .artifacts import ExportError
from .onnx_graph import INPUT_NAME, resize_session
from .parity import RESIZE_PROBE_IMAGES, RESIZE_PROBE_SIZES, network_problems, resize_problems, resize_stats


def check_resize(graph_path: Path, size_hw: tuple[int, int], what: str) -> dict[str, dict]:
    """The graph's own resize nodes against torchvision's resize to ``size_hw``, at every probe
    size; raises ExportError naming ``what`` when one is outside the tolerance."""
    from .synthetic import synthetic_images
    from .torch_reference import torchvision_resize
    session = resize_session(graph_path)
    results = {}
    for size in RESIZE_PROBE_SIZES:
        images = synthetic_images(RESIZE_PROBE_IMAGES, size, seed=size)
        stats = resize_stats(session.run(None, {INPUT_NAME: images})[0], torchvision_resize(images, size_hw))
        refuse_if(resize_problems(stats), what, size)
        results[f"size_{size}"] = stats
    return results


def refuse_network(record: dict, what: str, size: int) -> None:
    refuse_if(network_problems(record), what, size)


def refuse_if(problems: list[str], what: str, size: int) -> None:
    if problems:
        raise ExportError(f"{what} is refused at image size {size}: " + "; ".join(problems))
