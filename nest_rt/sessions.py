"""onnxruntime sessions: NEST's ``device`` argument mapped to execution providers, and
``Sessions``, the sessions of one graph, one per device."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .errors import InvalidParameterError, ModelLoadError, ParameterTypeError

DEVICES = ("auto", "cpu", "cuda")
_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# The CPU wheel (onnxruntime) and the GPU wheel (onnxruntime-gpu) install the same module, so
# the GPU one works only once the CPU one is gone; uninstalling onnxruntime also deletes files
# the GPU wheel shares with it, hence the reinstall.
CUDA_INSTALL_ADVICE = ("on a machine with an NVIDIA GPU, swap the CPU wheel for the GPU one (both provide the "
                       "onnxruntime module): pip uninstall -y onnxruntime && "
                       "pip install --force-reinstall 'onnxruntime-gpu>=1.18'")


def resolve_device(device: str) -> str:
    """Return 'cpu' or 'cuda'. 'auto' means CUDA when onnxruntime offers it, else CPU."""
    import onnxruntime as ort
    if not isinstance(device, str):
        raise ParameterTypeError(f"device must be a str, got {type(device).__name__}")
    if device not in DEVICES:
        raise InvalidParameterError(f"device={device!r} is not valid; valid values: {list(DEVICES)}")
    available = ort.get_available_providers()
    if device == "auto":
        return "cuda" if _PROVIDER["cuda"] in available else "cpu"
    if _PROVIDER[device] not in available:
        raise InvalidParameterError(
            f"device={device!r} but onnxruntime offers only {available}; for CUDA, {CUDA_INSTALL_ADVICE}")
    return device


def create_session(graph_path: Path, device: str, num_threads: int | None = None):
    """An InferenceSession for one graph on 'cpu' or 'cuda' (already resolved)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if num_threads:
        options.intra_op_num_threads = num_threads
    providers = [_PROVIDER[device]] + ([_PROVIDER["cpu"]] if device == "cuda" else [])
    try:
        session = ort.InferenceSession(str(graph_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped exceptions for bad graphs
        raise ModelLoadError(f"onnxruntime could not load {graph_path}: {exc}") from exc
    if session.get_providers()[0] != providers[0]:
        # onnxruntime quietly falls back to the CPU when the CUDA libraries fail to load
        raise InvalidParameterError(
            f"device={device!r}: onnxruntime could not start {providers[0]} (it offers "
            f"{session.get_providers()}); check the CUDA and cuDNN libraries that onnxruntime-gpu needs, "
            "and that the CPU wheel onnxruntime is not installed beside it")
    return session


class Sessions:
    """onnxruntime sessions of one graph, created on first use per device; ``check(session)``
    runs on each new session before it is used."""

    def __init__(self, path, num_threads: int | None, check: Callable[[Any], None] | None = None):
        self._path, self._num_threads, self._by_device, self._check = path, num_threads, {}, check

    def get(self, device: str):
        if device not in self._by_device:
            session = create_session(self._path, device, self._num_threads)
            if self._check is not None:
                self._check(session)
            self._by_device[device] = session
        return self._by_device[device]
