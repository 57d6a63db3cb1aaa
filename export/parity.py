"""Agreement between a reference and a candidate response matrix (numpy only)."""
from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs error, the reference's scale (max |response|), their ratio, and the minimum
    per-output Pearson correlation across images (outputs constant in the reference are
    skipped; there is none with synthetic or trained weights)."""
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
    return {"max_abs_error": error, "response_scale": scale, "relative_error": error / scale,
            "min_correlation": float(correlation.min()) if correlation.size else float("nan"),
            "images": int(reference.shape[0])}


# The stated tolerance for fwRF graphs (README "Parity"); export refuses a graph outside it and
# the tests hold the runtime to it. Relative error = max |nest_rt - torch| / max |torch|.
FWRF_TOLERANCE = {
    "native": {"relative_error": 1e-5, "min_correlation": 0.99999},   # S = 227: no resize
    "resized": {"relative_error": 5e-4, "min_correlation": 0.99999},  # resize rounds ~0.03 % of pixels differently
}


def within(stats: dict[str, float], limits: dict[str, float]) -> bool:
    return (stats["relative_error"] <= limits["relative_error"]
            and stats["min_correlation"] >= limits["min_correlation"])

# ViT pipelines (EEG and fsaverage), end to end from images to responses; S = 256 (the
# transform's resize target) is the native size. Upsampling small images (e.g. 224 -> 256)
# creates many exact .5 ties, which ONNX Resize and torchvision break differently more often
# than when downsampling: measured up to 6.6e-4 relative error, correlation 0.99997.
VIT_TOLERANCE = {
    "native": {"relative_error": 1e-5, "min_correlation": 0.99999},
    "resized": {"relative_error": 1e-3, "min_correlation": 0.9999},
}
