"""Loaded encoding models: the fwRF, the shared backbones and heads, and the linear models on them.

Every model turns a batch of uint8 images into a block of responses; the batched loop that
runs several of them over the same images is in encode_loop.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import catalog
from .bundle import Bundle
from .errors import BundleIntegrityError, InvalidParameterError, NotExportedError
from .selection import OutputPlan
from .sessions import Sessions, resolve_device

# The fwRF readout holds a few float32 [n, 256, V] temporaries at once. Small batches keep
# them near the CPU caches: measured on 2 cores, V1 (1350 voxels) ran fastest at 8-11 images
# per call and lateral (7799) the same at 1-16, while 64 images per call ran 2x slower.
_READOUT_BYTES_PER_IMAGE_VOXEL = 256 * 4 * 6
_BATCH_MEMORY_BUDGET = 80 * 2**20
_MAX_BATCH = 32
# Linear models. Each backbone runs the images per call that the catalog gives for it
# (images_per_call, measured per backbone: not a size of its features, since a network's own
# activations, not its output, decide its working memory and speed). The heads run 64 per call
# whatever the backbone: each call streams the subject's PCA matrix [features, components]
# through the GEMM once, so more images share that cost (ViT, 2 threads: 5.2 ms per image and
# head at 16, 2.0 at 64); the matrix and the work per image both grow with the features, so the
# best count does not.
HEAD_BATCH = 64


def fwrf_batch_size(voxels: int) -> int:
    """Images per fwRF call: as many as keep the readout's temporaries within the budget."""
    return int(max(1, min(_MAX_BATCH, _BATCH_MEMORY_BUDGET // (_READOUT_BYTES_PER_IMAGE_VOXEL * voxels))))


def fwrf_working_bytes(voxels: int) -> int:
    """Working memory per image of an fwRF call (the readout's float32 [256, V] temporaries)."""
    return _READOUT_BYTES_PER_IMAGE_VOXEL * voxels


def check_graph_contract(session, input_name: str, input_type: str, output_width: list, what: str) -> None:
    """Refuse a graph whose input or whose output's per-image width is not what the manifest
    declares (a mismatch would shift rows or allocate from a wrong size)."""
    graph_input, graph_output = session.get_inputs()[0], session.get_outputs()[0]
    if graph_input.name != input_name or graph_input.type != input_type:
        raise BundleIntegrityError(f"{what}: the graph takes {graph_input.name!r} {graph_input.type}, "
                                   f"expected {input_name!r} {input_type}; re-export the bundle")
    if list(graph_output.shape[1:]) != output_width:
        raise BundleIntegrityError(f"{what}: the graph gives {graph_output.shape[1:]} values per image but the "
                                   f"bundle declares {output_width}; re-export the bundle")


class EncodingModel:
    """What every loaded model has: identity, device, metadata and a batch size."""

    model_id: str
    batch_size: int

    def __init__(self, bundle: Bundle, subject: int, device: str, api: str):
        self.device = resolve_device(device)
        self.subject = subject
        self.api = api  # 'legacy' or 'current': decides encode's default return_metadata
        self._bundle = bundle

    def metadata(self) -> dict[str, Any]:
        return self._bundle.read_nested_npz(self._entry["metadata"])

    def allocate(self, count: int):
        raise NotImplementedError

    def run_batch(self, images: np.ndarray, device: str, shared: dict):
        """Responses for one uint8 batch; ``shared`` caches work that other models reuse for the
        same images (keys include the batch's position, set by the encode loop)."""
        raise NotImplementedError

    def describe_output(self) -> str:
        raise NotImplementedError

    def release_weights(self) -> None:
        """Drop weights kept between calls (they are read again when next needed)."""

    def cleanup(self) -> None:
        """Upstream's name: release what the model holds beyond its sessions."""
        self.release_weights()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:  # upstream's __exit__(self) failed on leaving a with block
        self.cleanup()


class FwrfEncodingModel(EncodingModel):
    """fwRF encoder of one subject and ROI: responses [N, voxels]."""

    def __init__(self, bundle: Bundle, model_id: str, subject: int, roi: str, device: str,
                 num_threads: int | None = None, api: str = "legacy"):
        super().__init__(bundle, subject, device, api)
        self.model_id, self.roi = model_id, roi
        self._entry = bundle.entry(self.model_id, subject, roi)
        self.voxels: int = int(self._entry["voxels"])
        self.sidecar: dict[str, Any] = bundle.read_json(self._entry["sidecar"])
        # the declared size decides the output arrays: it must be the graph's, or rows would shift
        self._sessions = Sessions(bundle.path(self._entry["graph"]), num_threads, check=lambda session: (
            check_graph_contract(session, "images", "tensor(uint8)", [self.voxels],
                                 f"{self.model_id} subject {subject} roi {roi}")))
        self._sessions.get(self.device)  # load now, like upstream's get_encoding_model
        if self.sidecar.get("voxels") != self.voxels:
            raise BundleIntegrityError(f"{self.model_id} subject {subject} roi {roi}: bundle.json says "
                                       f"{self.voxels} voxels, its sidecar {self.sidecar.get('voxels')!r}")
        self.batch_size = fwrf_batch_size(self.voxels)

    def __repr__(self) -> str:
        return (f"<FwrfEncodingModel {self.model_id} subject={self.subject} roi={self.roi!r} "
                f"voxels={self.voxels} device={self.device!r}>")

    def describe_output(self) -> str:
        return f"{self.model_id} subject {self.subject} roi {self.roi}"

    def allocate(self, count: int) -> np.ndarray:
        return np.empty((count, self.voxels), dtype=np.float32)

    def run_batch(self, images: np.ndarray, device: str, shared: dict) -> np.ndarray:
        return self._sessions.get(device).run(None, {"images": images})[0]


class Backbone:
    """A shared backbone graph (ViT-B/32, AlexNet or untrained AlexNet, by its manifest name):
    uint8 images -> [n, features] (460,800 for the ViT, 205,672 for AlexNet)."""

    def __init__(self, bundle: Bundle, num_threads: int | None, precision: str = "fp32", name: str = "vit_b_32"):
        self.name = name
        entry = bundle.manifest.get("backbones", {}).get(name)
        if entry is None:
            raise BundleIntegrityError(f"bundle {bundle.root} has no {name} backbone, which its heads on it need; "
                                       "re-export the bundle")
        self.features: int = int(entry["features"])
        self.batch_size = catalog.backbone(name).images_per_call
        self.precision = precision
        if precision == "fp32":
            bundle.path(entry["data"])  # verify the weights file too
            graph = bundle.path(entry["graph"])
        else:
            variant = entry.get("precisions", {}).get(precision)
            if variant is None:
                source = bundle.manifest.get("source", {}).get("nest_dir") or "TOOLKIT"
                raise NotExportedError(f"bundle {bundle.root} has no {precision} backbone; export one with: "
                                       f"nest-rt export --nest-dir {source} --out NEW_BUNDLE --precisions {precision}")
            graph = bundle.path(variant["graph"])
            if "data" in variant:
                bundle.path(variant["data"])
        self._sessions = Sessions(graph, num_threads, check=lambda session: check_graph_contract(
            session, "images", "tensor(uint8)", [self.features], f"the {name} backbone ({precision})"))

    def load(self, device: str) -> None:
        if self.precision == "fp16" and device != "cuda":
            raise InvalidParameterError(
                f"precision='fp16' runs on the CUDA provider only (device {device!r}); on the CPU "
                "it is slower than fp32: use precision='fp32' or 'int8' there")
        self._sessions.get(device)

    def run(self, images: np.ndarray, device: str, shared: dict) -> np.ndarray:
        """Features of ``images``, computed once per batch position for every model sharing them."""
        key = (id(self), device, shared.get("position"))
        if key not in shared:
            self.load(device)
            session = self._sessions.get(device)
            if len(images) <= self.batch_size:
                shared[key] = session.run(None, {"images": images})[0]
            else:  # a head batch (64) or streamed chunk: one buffer, filled batch_size images at a time
                features = np.empty((len(images), self.features), dtype=np.float32)
                for start in range(0, len(images), self.batch_size):
                    block = images[start:start + self.batch_size]
                    features[start:start + len(block)] = session.run(None, {"images": block})[0]
                shared[key] = features
        return shared[key]


class LinearHead:
    """One subject's folded scaler + PCA weights (and head graph), shared by every selection of it.

    pca_matrix is [features, P*K]: one block of K components per PCA (P = 1, or 4 for EEG files
    with one PCA per repetition). It is read from its .npy file (not memory-mapped: mapped pages
    would count towards the process as long as the map lives) and either kept or dropped after
    use, as the encode loop decides.
    """

    def __init__(self, bundle: Bundle, model_id: str, subject, variant: str, num_threads: int | None):
        entry = bundle.entry(model_id, subject, variant)
        self.sessions = Sessions(bundle.path(entry["head"]), num_threads)
        self._matrix_path, self._bias_path = bundle.path(entry["pca_matrix"]), bundle.path(entry["pca_bias"])
        shape = np.load(self._matrix_path, mmap_mode="r", allow_pickle=False).shape
        bias_shape = np.load(self._bias_path, mmap_mode="r", allow_pickle=False).shape
        self.pca_blocks, self.components = int(entry.get("pca_blocks", 1)), int(entry["components"])
        expected = self.pca_blocks * self.components
        if len(shape) != 2 or shape[1] != expected or bias_shape != (expected,):
            raise BundleIntegrityError(f"{model_id} subject {subject}: PCA arrays have shapes {shape} and "
                                       f"{bias_shape}, the manifest says [features, {expected}] and [{expected}]")
        self.features = shape[0]
        self.nbytes = 4 * self.features * expected
        self._kept: tuple[np.ndarray, np.ndarray] | None = None

    def projection(self, keep: bool) -> tuple[np.ndarray, np.ndarray]:
        if self._kept is not None:
            return self._kept
        arrays = (np.load(self._matrix_path, allow_pickle=False), np.load(self._bias_path, allow_pickle=False))
        if keep:
            self._kept = arrays
        return arrays

    def release(self) -> None:
        self._kept = None


class LinearEncodingModel(EncodingModel):
    """One subject (and variant) of a linear model (a backbone, then its head), with its selection applied.

    The selection picks regression columns once, here, so the head computes only the outputs
    that were asked for. The head gives [N, P * O] values (P PCA blocks of O columns each); they
    are split into the model's output arrays (fsaverage: lh and rh) in the manifest's order.
    """

    batch_size = HEAD_BATCH

    def __init__(self, bundle: Bundle, model_id: str, subject, variant: str, plans: list[OutputPlan],
                 backbone: Backbone, head: LinearHead, device: str, api: str = "legacy",
                 selection: dict | None = None):
        super().__init__(bundle, subject, device, api)
        self.model_id, self.variant = model_id, variant
        self.selection = selection or {}
        self.plans = plans
        # per output array and axis: the kept indices (EEG channels and times, fsaverage vertices...)
        self.selected_indices = {plan.name: plan.indices for plan in plans}
        self._entry = bundle.entry(model_id, subject, variant)
        self.sidecar: dict[str, Any] = bundle.read_json(self._entry["sidecar"])
        self.backbone, self.head = backbone, head
        head_width = head.sessions.get(self.device).get_inputs()[0].shape[1]
        if head_width != backbone.features or head.features != backbone.features:
            raise BundleIntegrityError(
                f"{self.describe_output()}: the head takes {head_width} features (PCA matrix: "
                f"{head.features}) but the bundle's backbone gives {backbone.features}; re-export the bundle")
        self._coef_path = bundle.path(self._entry["regression_coef"])
        self._intercept_path = bundle.path(self._entry["regression_intercept"])
        coef = np.load(self._coef_path, mmap_mode="r", allow_pickle=False)
        intercept = np.load(self._intercept_path, mmap_mode="r", allow_pickle=False)
        expected = (head.pca_blocks, head.components, int(self._entry["outputs"]))
        if coef.shape != expected or intercept.shape != (expected[0], expected[2]):
            raise BundleIntegrityError(
                f"{self.describe_output()}: regression arrays have shapes {coef.shape} and {intercept.shape}, "
                f"the manifest says {expected} and {(expected[0], expected[2])}")
        self._columns = _columns(plans, head.pca_blocks, expected[2], self.describe_output())
        self.outputs = int(expected[2] if self._columns is None else len(self._columns))
        self.weight_bytes = 4 * head.pca_blocks * self.outputs * (head.components + 1)  # the kept columns
        self._regression: tuple[np.ndarray, np.ndarray] | None = None
        self._device_values: dict[str, dict] = {}
        backbone.load(self.device)  # load now, like upstream's get_encoding_model

    def __repr__(self) -> str:
        return (f"<LinearEncodingModel {self.model_id} subject={self.subject!r} outputs={self.outputs} "
                f"device={self.device!r}>")

    def describe_output(self) -> str:
        variant = "" if self.variant == "all" else f" {self.variant}"
        return f"{self.model_id} subject {self.subject}{variant}"

    def allocate(self, count: int):
        arrays = tuple(np.empty((count, *plan.shape), dtype=np.float32) for plan in self.plans)
        return arrays if len(arrays) > 1 else arrays[0]

    def regression(self, keep: bool) -> tuple[np.ndarray, np.ndarray]:
        """The selected columns of the regression weights (and intercept)."""
        if self._regression is not None:
            return self._regression
        coef = np.load(self._coef_path, mmap_mode="r", allow_pickle=False)
        intercept = np.load(self._intercept_path, allow_pickle=False)
        if self._columns is not None:
            coef, intercept = coef[:, :, self._columns], intercept[:, self._columns]
        selected = (np.ascontiguousarray(coef, dtype=np.float32), np.ascontiguousarray(intercept, dtype=np.float32))
        del coef  # close the map: only the copy stays
        if keep:
            self._regression = selected
        return selected

    def release_weights(self) -> None:
        self._regression = None
        self._device_values.clear()
        self.head.release()

    def _weights(self, keep: bool) -> dict[str, np.ndarray]:
        matrix, bias = self.head.projection(keep)
        coef, intercept = self.regression(keep)
        return {"pca_matrix": matrix, "pca_bias": bias, "coef": coef, "intercept": intercept}

    def _weights_on_device(self, device: str, keep: bool) -> dict:
        """The weights as OrtValues on ``device``, copied there once while they are kept (not
        per batch, as numpy inputs would be: 461 MB host-to-device per call)."""
        import onnxruntime as ort
        if device in self._device_values:
            return self._device_values[device]
        values = {name: ort.OrtValue.ortvalue_from_numpy(array, device, 0)
                  for name, array in self._weights(keep).items()}
        if keep:
            self._device_values[device] = values
        return values

    def run_batch(self, images: np.ndarray, device: str, shared: dict):
        features = self.backbone.run(images, device, shared)
        keep = not shared.get("stream_heads", False)
        session = self.head.sessions.get(device)
        if device in _DEVICE_BOUND_WEIGHTS:
            flat = _run_bound(session, features, self._weights_on_device(device, keep))
        else:  # CPU: numpy inputs are used in place, without a copy
            flat = session.run(None, {"features": features, **self._weights(keep)})[0]
        arrays, start = [], 0
        for plan in self.plans:
            width = int(np.prod(plan.shape))
            arrays.append(flat[:, start:start + width].reshape(len(flat), *plan.shape))
            start += width
        return tuple(arrays) if len(arrays) > 1 else arrays[0]


class StackedModel(EncodingModel):
    """Several variants of one subject stacked on a new axis 1 (MEG's train_splits='single': the
    four split models as [N, 4, sensors, times]); each part shares the backbone's features."""

    def __init__(self, parts: list[LinearEncodingModel], axis_name: str):
        first = parts[0]
        super().__init__(first._bundle, first.subject, first.device, first.api)
        self.parts, self.axis_name = parts, axis_name
        self.model_id, self.selection = first.model_id, first.selection
        self.variant = "+".join(part.variant for part in parts)
        self.plans, self.selected_indices, self._entry = first.plans, first.selected_indices, first._entry
        self.batch_size = first.batch_size

    def __repr__(self) -> str:
        return f"<StackedModel {self.model_id} subject={self.subject!r} {self.axis_name}={len(self.parts)}>"

    def describe_output(self) -> str:
        return f"{self.model_id} subject {self.subject} {self.axis_name} {self.variant}"

    def allocate(self, count: int):
        return np.empty((count, len(self.parts), *self.plans[0].shape), dtype=np.float32)

    def run_batch(self, images: np.ndarray, device: str, shared: dict):
        return np.stack([part.run_batch(images, device, shared) for part in self.parts], axis=1)

    def release_weights(self) -> None:
        for part in self.parts:
            part.release_weights()


def _columns(plans: list[OutputPlan], pca_blocks: int, outputs: int, what: str) -> np.ndarray | None:
    """Head columns to keep, or None for all. With one PCA the columns of every regression block
    follow each other (block b's rows from b * rows_per_block); with one PCA per block each block
    has its own O columns, the same ones kept in every block."""
    if all(plan.is_everything() for plan in plans):
        return None
    if pca_blocks > 1:
        if len(plans) != 1:
            raise BundleIntegrityError(f"{what}: one PCA per block needs a single output array")
        return plans[0].rows
    block_rows = {block: int(np.prod([axis["size"] for axis in plan.axes])) for plan in plans for block in plan.blocks}
    offsets = np.cumsum([0] + [block_rows[b] for b in sorted(block_rows)])
    if offsets[-1] != outputs:
        raise BundleIntegrityError(f"{what}: the head has {outputs} outputs, the manifest's blocks {offsets[-1]}")
    return np.concatenate([offsets[block] + plan.rows for plan in plans for block in plan.blocks])


# Devices whose head weights are bound as device-resident OrtValues (see _weights_on_device).
_DEVICE_BOUND_WEIGHTS = {"cuda"}


def _run_bound(session, features: np.ndarray, weights: dict) -> np.ndarray:
    """Run a head whose weights are OrtValues already on the session's device."""
    binding = session.io_binding()
    binding.bind_cpu_input("features", features)
    for name, value in weights.items():
        binding.bind_ortvalue_input(name, value)
    binding.bind_output(session.get_outputs()[0].name, "cpu")
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[0]
