"""Safe use of paths: names read from files are confined to their folder, and only regular
files are opened.

A manifest or run record is data that may come from elsewhere: a copied bundle, a shard of
someone else's run. A file name in it must never make nest_rt read or write outside the folder
the record describes, whatever the name says or a symlink in the folder points to. And whatever
lies under a name nest_rt opens (an image, a record, a run's own file) may be a named pipe,
whose plain open would wait for a writer forever: ``open_regular`` never waits.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

_NOT_REGULAR = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotARegularFile(OSError):
    """``open_regular`` found ``kind`` (a FIFO, a folder, a device...) under the path."""

    def __init__(self, path: Any, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.kind = kind


def not_regular_kind(mode: int) -> str | None:
    """What a file of status ``mode`` is when it is not a regular file; None when it is one."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _NOT_REGULAR if test(mode)), "not a regular file")


def open_regular(path: Any, flags: int, mode: int = 0o666) -> int:
    """A descriptor of ``path`` opened with ``flags``, only if it is a regular file (else
    NotARegularFile; other failures are the OSError of the open). It is opened non-blocking, so
    a named pipe never waits for a writer, and checked on the open descriptor, so a file swapped
    in after any earlier check is caught too."""
    fd = os.open(path, flags | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0), mode)
    kind = not_regular_kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise NotARegularFile(path, kind)
    return fd


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
