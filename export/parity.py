"""How exported graphs are checked against the torch reference (numpy only, torch-free to import).

Every NEST pipeline starts with an antialiased resize of integer images, rounded back to
integers. onnxruntime's Resize and torchvision's agree to float32 rounding, but where the exact
value lies within a rounding error of x.5 the two round differently: about 0.002-0.2 % of the
pixels, by one grey level. How much that moves the responses depends on the weights, so an
end-to-end comparison alone mixes two things and cannot have a tolerance that is right for every
toolkit. The export therefore checks them apart:

- **resize**, at many sizes (RESIZE_PROBE_SIZES, up- and downsampling): the graph's own resize
  nodes against torchvision's resize of the same images;
- **network**, at the native size and one resized size: the graph's responses against the torch
  reference fed the graph's own resized pixels (identical inputs), both measured against
  upstream's maths evaluated in float64;
- **end to end**, at the same sizes: images -> responses against the reference, as a user sees
  it; recorded, not a gate (it is the two above combined).
"""
from __future__ import annotations

import numpy as np

from . import backbones

# The resize of an integer image: torchvision rounds a float32 result, so a correct graph can
# differ where that result lies within float32 error of x.5. Measured over sizes 64..1000 onto
# 227 and 256: at most 1 grey level, in at most 0.19 % of the pixels (224 -> 256 upsampling).
# A wrong resize (no antialias, another coordinate mode, the border rule exclude_outside=0)
# differs by several grey levels.
RESIZE_TOLERANCE = {"max_grey_levels": 1, "max_differing_fraction": 0.005}
# Square image sides the resize is checked at: upsampling, near 1:1, and downsampling up to ~4x
# (where a wrong border rule shows most: exclude_outside=0 is off by 7-8 grey levels at 425-1000).
RESIZE_PROBE_SIZES = (100, 224, 256, 300, 425, 1000)
RESIZE_PROBE_IMAGES = 4
# Graphs that resize the shorter side (the linear models' backbones) are also probed with
# non-square images (H, W): portrait, landscape, odd margins, a longer side one pixel longer.
NON_SQUARE_PROBE_SIZES = ((200, 300), (333, 500), (640, 427), (257, 256))

# The network on identical pixels: its error against float64 may be as large as float32
# arithmetic makes the torch reference's own error (times a margin for other kernels and
# summation orders), and never has to be smaller than 1e-6 of the response scale. Both errors
# are max |x - float64| / max |float64|. Measured: 4e-8 to 1e-7 for nest_rt and torch alike.
NETWORK_TOLERANCE = {"float32_noise_factor": 10.0, "relative_error_floor": 1e-6}

# End to end (images -> responses, resize rounding included), held by the tests on the project's
# synthetic toolkits only: what the resize's rounding does there. Not an export gate. The fwRF's
# is here; each backbone's models' is in its file (backbones/), under the backbone's name.
FWRF_END_TO_END_TOLERANCE = {"native": {"relative_error": 1e-5, "min_correlation": 0.99999},   # S = 227: no resize
                             "resized": {"relative_error": 5e-4, "min_correlation": 0.99999}}
END_TO_END_TOLERANCE = {"fwrf": FWRF_END_TO_END_TOLERANCE,
                        **{name: backbones.get(name).end_to_end_tolerance for name in backbones.names()}}


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs error, the reference's scale (max |response|), their ratio, and the minimum
    per-output Pearson correlation across images (outputs constant in the reference are
    skipped)."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    error = float(np.max(np.abs(reference - candidate)))
    scale = float(np.max(np.abs(reference)))
    ref_c = reference - reference.mean(axis=0)
    cand_c = candidate - candidate.mean(axis=0)
    denominator = np.sqrt((ref_c ** 2).sum(axis=0) * (cand_c ** 2).sum(axis=0))
    varying = denominator > 0
    correlation = (ref_c * cand_c).sum(axis=0)[varying] / denominator[varying]
    return {"max_abs_error": error, "response_scale": scale, "relative_error": error / scale if scale else error,
            "min_correlation": float(correlation.min()) if correlation.size else float("nan"),
            "images": int(reference.shape[0])}


def within(stats: dict[str, float], limits: dict[str, float]) -> bool:
    return (stats["relative_error"] <= limits["relative_error"]
            and stats["min_correlation"] >= limits["min_correlation"])


def resize_stats(graph_pixels: np.ndarray, torchvision_pixels: np.ndarray) -> dict:
    """How the graph's resized pixels (float, meant to be integers) differ from torchvision's."""
    graph_pixels = np.asarray(graph_pixels, np.float64)
    expected = np.asarray(torchvision_pixels, np.float64)
    if graph_pixels.shape != expected.shape:
        raise ValueError(f"resized shapes differ: {graph_pixels.shape} vs {expected.shape}")
    difference = np.abs(graph_pixels - expected)
    return {"pixels": int(difference.size), "differing_fraction": float(np.mean(difference > 0)),
            "max_grey_levels": float(difference.max()),
            "integers": bool(np.array_equal(graph_pixels, np.round(graph_pixels)))}


def network_stats(float64: np.ndarray, reference: np.ndarray, candidate: np.ndarray) -> dict:
    """The candidate (onnxruntime) and the reference (torch, float32), fed identical inputs, each
    against the same maths in float64; plus their direct comparison."""
    truth = np.asarray(float64, np.float64).reshape(len(float64), -1)
    scale = float(np.max(np.abs(truth))) or 1.0

    def error(values: np.ndarray) -> float:
        return float(np.max(np.abs(np.asarray(values, np.float64).reshape(truth.shape) - truth))) / scale
    noise = error(reference)
    allowed = max(NETWORK_TOLERANCE["relative_error_floor"], NETWORK_TOLERANCE["float32_noise_factor"] * noise)
    return {**compare(reference, candidate), "error_vs_float64": error(candidate),
            "reference_error_vs_float64": noise, "allowed_error_vs_float64": allowed}


def resize_problems(stats: dict) -> list[str]:
    """What a resize record fails, in words (empty when it passes)."""
    if (stats["integers"] and stats["max_grey_levels"] <= RESIZE_TOLERANCE["max_grey_levels"]
            and stats["differing_fraction"] <= RESIZE_TOLERANCE["max_differing_fraction"]):
        return []
    return [f"its resize differs from torchvision's by up to {stats['max_grey_levels']:g} grey levels in "
            f"{stats['differing_fraction']:.3%} of the pixels"
            + ("" if stats["integers"] else ", and its resized pixels are not integers")
            + f" (allowed: {RESIZE_TOLERANCE['max_grey_levels']} grey level in "
              f"{RESIZE_TOLERANCE['max_differing_fraction']:.1%})"]


def network_problems(record: dict) -> list[str]:
    """What a record with a 'network' part fails, in words (empty when it passes)."""
    network = record["network"]
    if network["error_vs_float64"] <= network["allowed_error_vs_float64"]:
        return []
    return [f"on identical pixels its error against float64 is {network['error_vs_float64']:.2e} of the "
            f"response scale, the torch reference's {network['reference_error_vs_float64']:.2e} "
            f"(allowed: {network['allowed_error_vs_float64']:.2e})"]
