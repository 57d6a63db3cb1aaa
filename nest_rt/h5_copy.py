"""HDF5 copies of a run's finished .npy arrays, in upstream's pregenerated layout.

``write_h5`` is called by runs; it starts ``python -m nest_rt.h5_copy TARGET SOURCES_JSON``
(``main``, which calls ``fill_h5``), the child process that keeps an HDF5 failure (a full disk)
from crashing the run itself."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from .errors import MissingExtraError
from .response_files import h5_dataset
from .run_files import PARTIAL, iter_npy_blocks, npy_header, write_failure

REASON_PREFIX = "nest_rt.h5_copy: "


def write_h5(arrays: dict[str, Path], target: Path) -> None:
    """Copy finished .npy arrays into one HDF5 file laid out like upstream's pregenerated
    responses: dataset 'synthetic_neural_responses' (or 'lh' and 'rh'). Written to a temporary
    name first, so an interrupted copy leaves no .h5 behind.

    The copy runs in a child process: after a failed write (a full disk) the HDF5 library cannot
    close its file, and the process that tried crashes at its next HDF5 call or at exit. In a
    child, that failure becomes this process's one-line OutputWriteError."""
    import importlib.util
    import subprocess
    if importlib.util.find_spec("h5py") is None:
        raise MissingExtraError("--h5 needs h5py: pip install 'nest-rt[h5]'")
    temporary = target.with_name(target.name + PARTIAL)
    temporary.unlink(missing_ok=True)  # an earlier try's, or a planted link: removed, never followed
    sources = json.dumps({name: str(path) for name, path in arrays.items()})
    child = subprocess.run([sys.executable, "-m", "nest_rt.h5_copy", str(temporary), sources],
                           capture_output=True, text=True)
    if child.returncode != 0:
        temporary.unlink(missing_ok=True)
        reasons = [line[len(REASON_PREFIX):] for line in child.stderr.splitlines() if line.startswith(REASON_PREFIX)]
        reason = reasons[-1] if reasons else f"the HDF5 writer failed (exit {child.returncode})"
        raise write_failure(target, OSError(reason))
    os.replace(temporary, target)


def fill_h5(handle, arrays: dict[str, Path]) -> None:
    """Write the arrays into an open h5py File and flush it (in the child process, see write_h5).
    The datasets stay referenced until the flush: a write failure then surfaces here, as an
    exception, rather than when a dataset is released."""
    datasets = []
    for name, source in arrays.items():
        shape, _ = npy_header(source)
        datasets.append(handle.create_dataset(h5_dataset(name), shape=shape, dtype=np.float32,
                                              chunks=(min(shape[0], 64), *shape[1:]) if all(shape) else None))
        row = 0
        for block in iter_npy_blocks(source):
            datasets[-1][row:row + len(block)] = block
            row += len(block)
    handle.flush()


def reason(exc: Exception) -> str:
    """One line: the system's error message that HDF5 embeds in its long report, if there is one."""
    text = str(exc)
    found = re.search(r"error message = '([^']*)'", text)
    if found:
        return found.group(1)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def main(argv: list[str]) -> int:
    import h5py
    target, sources = Path(argv[0]), {name: Path(path) for name, path in json.loads(argv[1]).items()}
    try:
        handle = h5py.File(target, "w-")  # a new file: never written through a link left at its name
        fill_h5(handle, sources)
        handle.close()
    except Exception as exc:
        print(f"{REASON_PREFIX}{reason(exc)}", file=sys.stderr, flush=True)
        os._exit(1)  # no cleanup: after a failed write, HDF5's own would crash the process
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
