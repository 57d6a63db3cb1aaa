"""Paths read from files (bundle manifests, run records) are confined to their folder.

A manifest or run record is data that may come from elsewhere: a copied bundle, a shard of
someone else's run. A file name in it must never make nest_rt read or write outside the folder
the record describes, whatever the name says or a symlink in the folder points to.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any


def confined(root: Path, relative: Any, what: str, error: type[Exception]) -> Path:
    """``root / relative`` after refusing (with ``error``) a name that is not a plain relative
    path, that has '..' parts, or that resolves outside ``root`` (through symlinks)."""
    if not isinstance(relative, str) or not relative:
        raise error(f"{what}: expected a relative file name, got {relative!r}")
    parts = PurePosixPath(relative)
    if parts.is_absolute() or relative.startswith("\\") or ".." in parts.parts or ":" in parts.parts[0]:
        raise error(f"{what}: {relative!r} is not a plain relative path inside {root}; refusing to use it")
    full = Path(root) / relative
    try:
        resolved = full.resolve()
    except (RuntimeError, OSError) as exc:  # a symbolic link loop (RuntimeError before Python 3.13)
        raise error(f"{what}: {relative!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(Path(root).resolve()):
        raise error(f"{what}: {relative!r} leads outside {root} (through a symbolic link); refusing to use it")
    return full
