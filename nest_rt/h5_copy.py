"""``python -m nest_rt.h5_copy TARGET SOURCES_JSON``: the HDF5 copy of run_files.write_h5, in the
child process that keeps an HDF5 failure (a full disk) from crashing the run itself."""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from .run_files import fill_h5

REASON_PREFIX = "nest_rt.h5_copy: "


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
