"""Small durable-file helpers shared by the log and the meta store.

Every helper here follows the same rule: a file or a directory entry is not
durable until it has been fsynced, and a rename is not durable until its
directory has been fsynced.
"""

from __future__ import annotations

import os
import sys

__all__ = ["atomic_replace", "fsync_dir", "sync_data", "sync_file"]


def sync_data(fd: int) -> None:
    """Make the data of ``fd`` durable (metadata only as far as needed to read it back)."""
    if sys.platform == "darwin":
        # On macOS fsync only reaches the drive cache; F_FULLFSYNC is the real barrier.
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    elif hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - platforms without fdatasync
        os.fsync(fd)


def sync_file(fd: int) -> None:
    """Make data and metadata (size included) of ``fd`` durable."""
    if sys.platform == "darwin":
        import fcntl

        fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        os.fsync(fd)


def fsync_dir(directory: str) -> None:
    """Make the directory entries of ``directory`` (creations, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(directory: str, name: str, data: bytes) -> None:
    """Durably replace ``directory/name`` with ``data``: write a temp file, fsync it,
    rename it over the target, fsync the directory. A crash leaves either the old
    or the new content, never a mix (a stale ``name.tmp`` at worst, which readers ignore)."""
    tmp = os.path.join(directory, name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        sync_file(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(directory, name))
    fsync_dir(directory)
