"""The torch-based export package, for the verbs that need it (export, synthetic-toolkit)."""
from __future__ import annotations

import importlib
import importlib.util


class ExportExtraMissing(RuntimeError):
    """The export extra is not installed; the command line prints this without its verb's name."""


def export_stage():
    """Import the torch-based export package, or explain how to install it. Only these
    commands load torch; the runtime never does."""
    missing = [name for name in ("torch", "torchvision", "onnx", "sklearn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportExtraMissing(f"this command needs the export extra ({', '.join(missing)} missing): "
                                 "pip install 'nest-rt[export]'")
    return (importlib.import_module("nest_rt_export.exporter"),
            importlib.import_module("nest_rt_export.synthetic"))
