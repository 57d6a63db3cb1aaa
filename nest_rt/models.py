"""Loaded encoding models: one onnxruntime graph plus its sidecar, and batched encoding."""
from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import Bundle
from .errors import NonFiniteOutputError
from .images import Stimulus
from .sessions import create_session, resolve_device

# The fwRF readout holds a few float32 [n, 256, V] temporaries at once. Small batches keep
# them near the CPU caches: measured on 2 cores, V1 (1350 voxels) ran fastest at 8-11 images
# per call and lateral (7799) the same at 1-16, while 64 images per call ran 2x slower.
_READOUT_BYTES_PER_IMAGE_VOXEL = 256 * 4 * 6
_BATCH_MEMORY_BUDGET = 80 * 2**20
_MAX_BATCH = 32


class FwrfEncodingModel:
    """fwRF encoder of one subject and ROI (`fmri-nsd-fwrf`), ready to encode images."""

    model_id = "fmri-nsd-fwrf"

    def __init__(self, bundle: Bundle, subject: int, roi: str, device: str,
                 num_threads: int | None = None):
        self.device = resolve_device(device)
        self.subject = subject
        self.roi = roi
        self._bundle = bundle
        self._entry = bundle.entry(self.model_id, subject, roi)
        self.voxels: int = int(self._entry["voxels"])
        self.sidecar: dict[str, Any] = bundle.read_json(self._entry["sidecar"])
        self._graph_path = bundle.path(self._entry["graph"])
        self._num_threads = num_threads
        self._sessions: dict[str, Any] = {}
        self._session(self.device)  # load now, like upstream's get_encoding_model

    def __repr__(self) -> str:
        return (f"<FwrfEncodingModel {self.model_id} subject={self.subject} roi={self.roi!r} "
                f"voxels={self.voxels} device={self.device!r}>")

    @property
    def batch_size(self) -> int:
        """Images per onnxruntime call, sized so the readout temporaries stay within budget."""
        per_image = _READOUT_BYTES_PER_IMAGE_VOXEL * self.voxels
        return int(max(1, min(_MAX_BATCH, _BATCH_MEMORY_BUDGET // per_image)))

    def metadata(self) -> dict[str, Any]:
        return self._bundle.read_nested_npz(self._entry["metadata"])

    def encode(self, images: Any, device: str = "auto", show_progress: bool = True) -> np.ndarray:
        """Responses float32 ``[N, voxels]`` for validated images (see nest_rt.images)."""
        stimulus = images if isinstance(images, Stimulus) else Stimulus(images)
        session = self._session(self.device if device == "auto" else resolve_device(device))
        responses = np.empty((stimulus.count, self.voxels), dtype=np.float32)
        with _progress(stimulus.count, show_progress and stimulus.count > self.batch_size) as bar:
            for batch in stimulus.batches(self.batch_size):
                (block,) = session.run(None, {"images": batch.images})
                if not np.isfinite(block).all():
                    bad = np.flatnonzero(~np.isfinite(block).all(axis=1)) + batch.start
                    raise NonFiniteOutputError(
                        f"{self.model_id} subject {self.subject} roi {self.roi} produced NaN or "
                        f"infinite responses for images {bad[:10].tolist()}")
                responses[batch.start:batch.stop] = block
                bar.update(batch.stop - batch.start)
        return responses

    def _session(self, device: str):
        if device not in self._sessions:
            self._sessions[device] = create_session(self._graph_path, device, self._num_threads)
        return self._sessions[device]


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, unit="img", disable=not enabled, desc="encoding")
