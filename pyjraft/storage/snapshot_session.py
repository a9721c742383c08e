"""The two ways a snapshot comes into being: written here, or received from a leader.

Both fill a temporary directory inside the snapshot root and end in the same
publication (`pyjraft.storage.snapshot.SnapshotStorage`): every file and the
directory fsynced, the metadata file written and fsynced, the directory
renamed into place, the root fsynced. Until then nothing of it is visible,
and a crash leaves only a temporary directory, removed at the next open.

`SnapshotWriteSession`: the state machine writes its files into
``directory`` (from any thread), then `SnapshotWriteSession.commit` lists
them, checksums each one in a streaming pass (bounded memory) while making
it durable, and publishes.

`SnapshotInstallSession`: a leader's chunks arrive in order per file
(`SnapshotInstallSession.write_chunk`); each is checked against the leader's
metadata before it is written (a known file, the next offset, not past the
file's size), and a running CRC32C is kept per file, so nothing is ever held
in memory beyond one chunk. `SnapshotInstallSession.finish` requires every
file complete with the leader's size and CRC32C, then publishes.

A session is used by one thread at a time. It is a context manager: leaving
the ``with`` block without a commit or finish aborts it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from types import TracebackType
from typing import Protocol

import crc32c

from pyjraft.core.types import ConfState
from pyjraft.storage._fileutil import open_dir_fd, open_fd, pwrite_all
from pyjraft.storage.api import InvalidSnapshotError, StorageError
from pyjraft.storage.snapshot_manifest import (
    MAX_SNAPSHOT_FILES,
    SnapshotFile,
    SnapshotManifest,
    check_file_name,
    check_snapshot_manifest,
)

__all__ = ["SnapshotInstallSession", "SnapshotWriteSession", "checksum_fd", "fsync_directory"]

_CHUNK = 1 << 20  # bytes read at a time when checksumming


class _Publisher(Protocol):
    """What a session needs of its `SnapshotStorage`."""

    def _publish(self, tmp: str, meta: SnapshotManifest) -> SnapshotManifest: ...

    def _discard(self, tmp: str) -> None: ...

    def _crash_point(self, where: str) -> None: ...


def checksum_fd(fd: int) -> tuple[int, int]:
    """``(size, crc32c)`` of the file open at ``fd``, read from its start in 1 MiB
    pieces (bounded memory, whatever the file's size)."""
    crc = 0
    size = 0
    while True:
        chunk = os.pread(fd, _CHUNK, size)
        if not chunk:
            return size, crc
        crc = crc32c.crc32c(chunk, crc)
        size += len(chunk)


def fsync_directory(path: str) -> None:
    """fsync the directory ``path`` (its entries: creations, renames)."""
    fd = open_dir_fd(path)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Session:
    """What both sessions share: a temporary directory, and its end."""

    def __init__(self, storage: _Publisher, tmp: str) -> None:
        self._storage = storage
        self._tmp = tmp
        self._directory = os.path.join(tmp, "data")
        self._done = False

    @property
    def directory(self) -> str:
        """The directory the snapshot's files go into (inside the snapshot root)."""
        return self._directory

    def abort(self) -> None:
        """Give up: the temporary directory and everything in it are removed. Safe to
        call more than once, and after a failed commit or finish."""
        if self._done:
            return
        self._done = True
        self._close_files()
        self._storage._discard(self._tmp)

    def _check_active(self) -> None:
        if self._done:
            raise ValueError("snapshot session already committed, finished or aborted")

    def _close_files(self) -> None:
        """Release any descriptor the session holds."""

    def _publish(self, meta: SnapshotManifest) -> SnapshotManifest:
        fsync_directory(self._directory)
        try:
            published = self._storage._publish(self._tmp, meta)
        except BaseException:
            # The storage has removed (or left for the next open) what it could not
            # publish; nothing more can be done with this session.
            self._done = True
            raise
        self._done = True
        return published

    def __enter__(self) -> _Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class SnapshotWriteSession(_Session):
    """A snapshot being written locally at ``index`` (see the module docstring)."""

    def __init__(
        self, storage: _Publisher, tmp: str, index: int, term: int, conf: ConfState
    ) -> None:
        super().__init__(storage, tmp)
        self.index = index
        """Last included index: the state machine has applied exactly up to it."""
        self.term = term
        """Term of the entry at ``index``."""
        self.conf = conf
        """The configuration at ``index``."""

    def __enter__(self) -> SnapshotWriteSession:
        return self

    def commit(self, user_meta: bytes = b"") -> SnapshotManifest:
        """Publish the files written into `directory` as the snapshot at `index`, with
        ``user_meta``; durable and visible on return. Returns its metadata (that of
        an existing valid snapshot at the same index instead, if there is one).

        Raises `InvalidSnapshotError` (the session stays open: fix and commit again,
        or abort) if the directory holds anything but regular files with acceptable
        names, too many of them, or ``user_meta`` is too large; `StorageError` on IO
        failure (the session is then over); `TransientStorageError` if no descriptor
        was left (nothing changed: retry)."""
        self._check_active()
        files = []
        try:
            names = sorted(os.listdir(self._directory))
            if len(names) > MAX_SNAPSHOT_FILES:
                raise InvalidSnapshotError(
                    f"{self._directory}: {len(names)} files, at most {MAX_SNAPSHOT_FILES}"
                )
            for name in names:
                path = os.path.join(self._directory, name)
                check_file_name(name)
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    raise InvalidSnapshotError(f"{path}: not a regular file")
            meta = SnapshotManifest(self.index, self.term, self.conf, (), user_meta)
            check_snapshot_manifest(meta)
            for name in names:
                path = os.path.join(self._directory, name)
                fd = open_fd(path, os.O_RDONLY)
                try:
                    size, crc = checksum_fd(fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                files.append(SnapshotFile(name, size, crc))
            self._storage._crash_point("files_synced")
            meta = SnapshotManifest(self.index, self.term, self.conf, tuple(files), user_meta)
            return self._publish(meta)
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self._tmp}: cannot commit snapshot: {exc}") from exc


class SnapshotInstallSession(_Session):
    """A leader's snapshot being received (see the module docstring)."""

    def __init__(self, storage: _Publisher, tmp: str, meta: SnapshotManifest) -> None:
        check_snapshot_manifest(meta)
        super().__init__(storage, tmp)
        self.meta = meta
        """The leader's metadata: what the received files must be."""
        self._expected = {f.name: f for f in meta.files}
        self._written: dict[str, int] = {}  # bytes received per file
        self._crcs: dict[str, int] = {}
        self._synced: set[str] = set()
        self._fd = -1
        self._fd_name = ""

    def __enter__(self) -> SnapshotInstallSession:
        return self

    @property
    def bytes_done(self) -> int:
        """Bytes received so far, over all files."""
        return sum(self._written.values())

    @property
    def bytes_total(self) -> int:
        """Bytes of the whole snapshot."""
        return self.meta.total_size

    def next_offset(self, name: str) -> int:
        """The offset the next chunk of file ``name`` must start at."""
        return self._written.get(name, 0)

    def write_chunk(self, name: str, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of file ``name``. Chunks of a file must be
        contiguous, in order, and within its size in the leader's metadata; anything
        else raises `InvalidSnapshotError` and writes nothing (the session stays as
        it was). `StorageError` on IO failure (the session is then aborted)."""
        self._check_active()
        f = self._expected.get(name)
        if f is None:
            raise InvalidSnapshotError(f"chunk for {name!r:.80}, which is not in the snapshot")
        written = self._written.get(name, 0)
        if offset != written:
            raise InvalidSnapshotError(
                f"chunk of {name!r} at offset {offset}, expected {written}: chunks of a "
                "file must be contiguous and in order"
            )
        if written + len(data) > f.size:
            raise InvalidSnapshotError(
                f"chunk of {name!r} ends at {written + len(data)}, past its size {f.size}"
            )
        try:
            fd = self._fd_for(name)
            pwrite_all(fd, data, offset)
            self._written[name] = written + len(data)
            self._crcs[name] = crc32c.crc32c(data, self._crcs.get(name, 0))
            if self._written[name] == f.size:
                self._sync_current()
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self._tmp}: cannot write {name!r}: {exc}") from exc

    def finish(self) -> SnapshotManifest:
        """Check that every file arrived whole with the leader's size and CRC32C, then
        publish the snapshot (durable and visible on return). `InvalidSnapshotError`
        naming the first file that does not match (the session stays open: abort
        it); `StorageError` on IO failure (the session is then over)."""
        self._check_active()
        for f in self.meta.files:
            got = self._written.get(f.name, 0)
            if got != f.size:
                raise InvalidSnapshotError(f"file {f.name!r}: received {got} of {f.size} bytes")
            if self._crcs.get(f.name, 0) != f.crc32c:
                raise InvalidSnapshotError(
                    f"file {f.name!r}: CRC32C of the data received does not match the "
                    "leader's metadata"
                )
        try:
            for f in self.meta.files:
                if f.name not in self._synced:  # empty files, never written to
                    self._fd_for(f.name)
                    self._sync_current()
            self._storage._crash_point("files_synced")
            return self._publish(self.meta)
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self._tmp}: cannot publish snapshot: {exc}") from exc

    def _fd_for(self, name: str) -> int:
        if self._fd_name != name:
            self._close_files()
            path = os.path.join(self._directory, name)
            self._fd = open_fd(path, os.O_WRONLY | os.O_CREAT)
            self._fd_name = name
        return self._fd

    def _sync_current(self) -> None:
        os.fsync(self._fd)
        self._synced.add(self._fd_name)
        self._close_files()

    def _close_files(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
            self._fd_name = ""
