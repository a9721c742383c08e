"""Small durable-file helpers shared by the log and the meta store.

Every helper here follows the same rule: a file or a directory entry is not
durable until it has been fsynced, and a rename is not durable until its
directory has been fsynced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys

import crc32c

from pyjraft.storage.api import StorageError, TransientStorageError

__all__ = [
    "atomic_replace",
    "file_crc",
    "fsync_dir",
    "is_fd_exhaustion",
    "lock_directory",
    "make_dirs_durable",
    "open_dir_fd",
    "open_fd",
    "pwrite_all",
    "sync_data",
    "sync_file",
    "unlink_quietly",
]


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


_FD_EXHAUSTION = (errno.EMFILE, errno.ENFILE)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def is_fd_exhaustion(exc: BaseException) -> bool:
    """True if ``exc`` says the process or the system ran out of file descriptors."""
    return isinstance(exc, OSError) and exc.errno in _FD_EXHAUSTION


def open_fd(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` (close-on-exec), raising `TransientStorageError` when no file
    descriptor is left (EMFILE, ENFILE). Callers open every descriptor a change
    needs before making it, so that error always means nothing was changed."""
    try:
        return os.open(path, flags | _O_CLOEXEC, mode)
    except OSError as exc:
        if is_fd_exhaustion(exc):
            raise TransientStorageError(
                f"{path}: cannot open: {exc.strerror} (nothing was changed; retry)"
            ) from exc
        raise


def open_dir_fd(directory: str) -> int:
    """A read-only descriptor of ``directory``, to fsync it (see `open_fd`)."""
    return open_fd(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def fsync_dir(directory: str) -> None:
    """Make the directory entries of ``directory`` (creations, renames, unlinks) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durable(directory: str) -> None:
    """Create ``directory`` and any missing parents, durably: each level created is
    fsynced in its parent before this returns (a ``mkdir`` is a directory entry in
    the parent, lost on power failure until the parent is fsynced). Levels that
    already exist are left alone, except ``directory`` itself, whose entry in its
    parent is fsynced on every call: a previous run may have created it and died
    before its own fsync, and a later write in it must not outlive its directory.
    """
    directory = os.path.abspath(directory)
    missing: list[str] = []
    level = directory
    while not os.path.isdir(level):
        missing.append(level)
        parent = os.path.dirname(level)
        if parent == level:
            break
        level = parent
    for path in reversed(missing):  # outermost first
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            if not os.path.isdir(path):
                raise
        fsync_dir(os.path.dirname(path))
    if not missing:
        # Best effort: a parent we did not create may not be readable by us.
        with contextlib.suppress(PermissionError):
            fsync_dir(os.path.dirname(directory))


def atomic_replace(directory: str, name: str, data: bytes, dir_fd: int = -1) -> None:
    """Durably replace ``directory/name`` with ``data``: write a temp file, fsync it,
    rename it over the target, fsync the directory. A crash leaves either the old
    or the new content, never a mix (a stale ``name.tmp`` at worst, which readers ignore).

    ``dir_fd`` is an open descriptor of ``directory`` to fsync it with (one is
    opened otherwise). Both descriptors are open before anything changes, so a
    `TransientStorageError` (no descriptor left) means nothing was changed; any
    other failure raises `OSError`.
    """
    own_dir_fd = dir_fd < 0
    if own_dir_fd:
        dir_fd = open_dir_fd(directory)
    try:
        tmp = os.path.join(directory, name + ".tmp")
        fd = open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            sync_file(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(directory, name))
        os.fsync(dir_fd)
    finally:
        if own_dir_fd:
            os.close(dir_fd)


def lock_directory(directory: str, name: str = "log.lock") -> int:
    """Open ``directory/name`` and take an exclusive ``flock`` on it; the returned fd
    holds the lock until closed. Raises `StorageError` if another holder has it."""
    import fcntl

    path = os.path.join(directory, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"{directory}: log is in use by another process or open ({exc})"
        ) from exc
    return fd


def pwrite_all(fd: int, buf: bytes | bytearray, offset: int) -> None:
    """Write all of ``buf`` at ``offset``: one ``pwrite`` unless the kernel writes short."""
    n = os.pwrite(fd, buf, offset)
    if n == len(buf):
        return
    view = memoryview(buf)
    while n < len(buf):
        written = os.pwrite(fd, view[n:], offset + n)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} bytes")
        n += written


def unlink_quietly(path: str) -> None:
    """Unlink ``path`` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def file_crc(fd: int, size: int) -> int:
    """CRC32C of the first ``size`` bytes of ``fd``."""
    crc = 0
    pos = 0
    while pos < size:
        chunk = os.pread(fd, min(8 * (1 << 20), size - pos), pos)
        if not chunk:
            raise OSError(f"file shorter than {size} bytes")
        crc = crc32c.crc32c(chunk, crc)
        pos += len(chunk)
    return crc
