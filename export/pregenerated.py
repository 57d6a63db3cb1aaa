"""Convert upstream's pregenerated-response metadata (pickled ``.npy`` dicts) to pickle-free npz.

The runtime never unpickles, so ``load_insilico_neural_responses`` reads the metadata from
these npz copies. The responses themselves (.h5, up to tens of GB) stay in the toolkit, where
the runtime reads them lazily; the bundle only records their paths and sizes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nest_rt import response_files
from nest_rt.bundle import sha256_file

from .artifacts import save_flat_npz
from .errors import ExportError
from .toolkit import load_npy_dict


def convert_pregenerated_metadata(nest_dir: str | Path, bundle_dir: str | Path) -> dict[str, Any]:
    """Write ``<bundle_dir>/pregenerated_insilico_neural_responses/<same path>.npz`` for every
    pregenerated metadata ``.npy`` of the toolkit, read through the restricted unpickler.

    Returns what bundle.json records under "pregenerated": each npz written (relative to the
    bundle) with its source file and sha256, and the toolkit's response files with their sizes
    (relative to the toolkit).
    """
    nest_dir, bundle_dir = Path(nest_dir), Path(bundle_dir)
    source = nest_dir / response_files.PREGENERATED_DIR
    pickled = sorted(source.rglob(response_files.metadata_file("*", ".npy")))
    if not pickled:
        raise ExportError(f"--pregenerated: {source} holds no {response_files.metadata_file('sub-*', '.npy')} "
                          "files (only the legacy toolkit layout has pregenerated responses)")
    converted = {}
    for path in pickled:
        target = bundle_dir / path.relative_to(nest_dir).with_suffix(".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            save_flat_npz(target, load_npy_dict(path))
        except ExportError as exc:  # an entry that only pickle could store
            raise ExportError(f"cannot convert {path} pickle-free: {exc}") from exc
        converted[target.relative_to(bundle_dir).as_posix()] = {
            "source": path.relative_to(nest_dir).as_posix(), "source_sha256": sha256_file(path)}
    return {
        "metadata": converted,
        # too big to hash at every export: paths and sizes only
        "responses": {path.relative_to(nest_dir).as_posix(): {"bytes": path.stat().st_size}
                      for path in sorted(source.rglob(response_files.responses_file("*", ".h5")))},
    }
