"""`FileMetaStorage`: the node's term and vote in one small, atomically replaced file.

File format (little-endian), named ``meta`` inside the directory::

    magic  4s  b"PJMS"
    crc    I   CRC32C of every byte after this field
    ver    B   format version (1)
    _      B   reserved, 0
    vlen   H   length of the vote in bytes
    term   Q
    vote   vlen bytes, UTF-8

A save writes ``meta.tmp``, fsyncs it, renames it over ``meta`` and fsyncs the
directory, so a crash leaves the old or the new state; a leftover ``meta.tmp``
is ignored by `FileMetaStorage.load` and overwritten by the next save.
"""

from __future__ import annotations

import os
import struct

import crc32c

from pyjraft.core.types import HardState
from pyjraft.storage._fileutil import (
    atomic_replace,
    is_fd_exhaustion,
    make_dirs_durable,
    open_fd,
)
from pyjraft.storage.api import StorageError, TransientStorageError

__all__ = ["FileMetaStorage"]

_MAGIC = b"PJMS"
_VERSION = 1
_HEADER = struct.Struct("<4sIBBHQ")
_MAX_VOTE = 0xFFFF


class FileMetaStorage:
    """A `MetaStorage` backed by ``directory/meta``. The directory (and any missing
    parent) is created if missing, durably: fsynced in its parent."""

    FILE_NAME = "meta"
    """Name of the state file inside the directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = os.fspath(directory)
        try:
            make_dirs_durable(self._dir)
        except OSError as exc:
            if is_fd_exhaustion(exc):  # creating directories again is harmless
                raise TransientStorageError(f"{self._dir}: cannot open: {exc}") from exc
            raise StorageError(f"{self._dir}: cannot create directory: {exc}") from exc
        self._path = os.path.join(self._dir, self.FILE_NAME)

    @property
    def path(self) -> str:
        """Path of the state file."""
        return self._path

    def load(self) -> HardState:
        """The last saved state; ``HardState()`` if nothing was ever saved.

        Raises `StorageError` naming the file if it is damaged or of an unknown version,
        `TransientStorageError` (retryable) if no file descriptor was left to open it.
        """
        try:
            with os.fdopen(open_fd(self._path, os.O_RDONLY), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return HardState()
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot read: {exc}") from exc
        if len(raw) < _HEADER.size:
            raise StorageError(f"{self._path}: truncated ({len(raw)} bytes)")
        magic, crc, version, _reserved, vlen, term = _HEADER.unpack_from(raw, 0)
        if magic != _MAGIC:
            raise StorageError(f"{self._path}: bad magic {magic!r}")
        if crc32c.crc32c(memoryview(raw)[8:]) != crc:
            raise StorageError(f"{self._path}: CRC mismatch")
        if version != _VERSION:
            raise StorageError(f"{self._path}: unknown format version {version}")
        if len(raw) != _HEADER.size + vlen:
            raise StorageError(
                f"{self._path}: length {len(raw)} does not match header ({_HEADER.size + vlen})"
            )
        try:
            vote = raw[_HEADER.size :].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise StorageError(f"{self._path}: vote is not UTF-8") from exc
        return HardState(term=term, vote=vote)

    def save(self, state: HardState) -> None:
        """Replace the saved state; durable on return.

        Raises `TransientStorageError` if no file descriptor was left (EMFILE,
        ENFILE): nothing was changed, the previous state is still the saved one,
        and the save may be retried. Raises `StorageError` on any other IO failure
        (fatal: the saved state is then unknown until the next `load`)."""
        vote = state.vote.encode("utf-8")
        if len(vote) > _MAX_VOTE:
            raise ValueError(f"vote too long ({len(vote)} bytes)")
        if state.term < 0:
            raise ValueError(f"negative term {state.term}")
        body = _HEADER.pack(_MAGIC, 0, _VERSION, 0, len(vote), state.term) + vote
        crc = crc32c.crc32c(memoryview(body)[8:])
        data = body[:4] + struct.pack("<I", crc) + body[8:]
        try:
            atomic_replace(self._dir, self.FILE_NAME, data)
        except OSError as exc:
            raise StorageError(f"{self._path}: cannot save: {exc}") from exc
