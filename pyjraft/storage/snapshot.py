"""`SnapshotStorage`: snapshots as directories, published atomically, kept N deep.

Theory of operation
===================

Layout of the snapshot root (one per raft group)::

    snapshot-<index, 20 digits>/      a published snapshot
        meta                          its metadata (`pyjraft.storage.snapshot_manifest`)
        data/                         the state machine's files (flat, regular files)
    tmp-<index>-<random>/             a snapshot being written or received
    trash-<...>/                      a snapshot being deleted
    corrupt-snapshot-<index>-<...>/   a snapshot that failed verification (kept)
    snapshot.lock                     held with ``flock`` while open

The contract of a publication (`SnapshotWriteSession.commit`,
`SnapshotInstallSession.finish`), in order:

1. every file of ``tmp-*/data`` is fsynced (after being checksummed, or as it
   was received), then ``data/`` itself;
2. ``tmp-*/meta`` is written and fsynced, then ``tmp-*/``;
3. ``tmp-*`` is renamed to ``snapshot-<index>``: the commit point;
4. the root is fsynced: the new snapshot is durable;
5. only then are snapshots beyond the newest ``keep`` pruned: each renamed
   to ``trash-*`` (the root fsynced), then removed.

A crash before 3 leaves a ``tmp-*`` directory, before 4 possibly not even
the rename: the previous snapshots are untouched either way, and the next
open removes every ``tmp-*`` and ``trash-*`` directory. A directory named
``snapshot-*`` is therefore always complete and durable, so a snapshot that
fails verification later is damage, never a half-written copy: a restarted
process never loads a partial snapshot, written here or received.

Reading: `latest` and `list` read only metadata (and check that each file
exists with its recorded size); `verify` re-reads every file and checks its
CRC32C, raising `CorruptSnapshotError` naming the file; `load_newest_valid`
verifies from the newest down, moves a damaged one aside
(``corrupt-snapshot-*``, logged with the file at fault) and falls back to
the previous one. A `SnapshotReader` (`open`, `open_latest`) pins its snapshot: pruning
skips it until the reader is closed (a leader streaming it to a follower
while newer snapshots are taken).

Threading: sessions may be committed, and files read, from worker threads;
publication, pruning and the readers' pins are serialized by one lock.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import re
import secrets
import shutil
import stat
import threading
from collections import Counter
from types import TracebackType

from pyjraft.core.types import ConfState
from pyjraft.storage._fileutil import (
    lock_directory,
    make_dirs_durable,
    open_dir_fd,
    open_fd,
)
from pyjraft.storage.api import CorruptSnapshotError, InvalidSnapshotError, StorageError
from pyjraft.storage.snapshot_manifest import (
    MAX_META_BYTES,
    SnapshotManifest,
    check_file_name,
    check_snapshot_manifest,
    decode_snapshot_manifest,
    encode_snapshot_manifest,
)
from pyjraft.storage.snapshot_session import (
    SnapshotInstallSession,
    SnapshotWriteSession,
    checksum_fd,
    fsync_directory,
)

__all__ = ["SnapshotReader", "SnapshotStorage", "snapshot_dir_name"]

logger = logging.getLogger("pyjraft.storage")

_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{20})$")
_LEFTOVER_RE = re.compile(r"^(tmp|trash)-")
_META = "meta"
_DATA = "data"
MAX_CHUNK_BYTES = 64 << 20
"""Largest `SnapshotReader.read_chunk`."""


def snapshot_dir_name(index: int) -> str:
    """Name of the directory of the snapshot at ``index`` (sorts by index)."""
    return f"snapshot-{index:020d}"


class SnapshotStorage:
    """The snapshots of one raft group in ``directory`` (see the module docstring).

    Opening creates the directory if needed (durably), locks it (`StorageError`
    if another process has it open) and removes leftovers of interrupted
    publications and prunings. ``keep`` (default 2, at least 1) is how many of
    the newest snapshots are kept after a new one is published.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self._dir = os.path.abspath(os.fspath(directory))
        self._keep = keep
        self._lock = threading.Lock()
        self._pins: Counter[int] = Counter()  # snapshot index -> open readers
        self._closed = False
        self._lock_fd = -1
        self._dir_fd = -1
        try:
            make_dirs_durable(self._dir)
            self._lock_fd = lock_directory(self._dir, "snapshot.lock")
            self._dir_fd = open_dir_fd(self._dir)
            self._remove_leftovers()
        except BaseException as exc:
            self._release()
            if isinstance(exc, OSError):
                raise StorageError(f"{self._dir}: cannot open snapshot storage: {exc}") from exc
            raise

    @property
    def directory(self) -> str:
        """The snapshot root (absolute)."""
        return self._dir

    @property
    def keep(self) -> int:
        """How many of the newest snapshots are kept."""
        return self._keep

    # ---------------------------------------------------------------- writing

    def begin(self, index: int, term: int, conf: ConfState) -> SnapshotWriteSession:
        """Start writing the snapshot of the state at ``index`` (of term ``term``, with
        configuration ``conf``): write its files into the session's ``directory``,
        then `SnapshotWriteSession.commit` (or ``abort``)."""
        check_snapshot_manifest(SnapshotManifest(index, term, conf, ()))
        return SnapshotWriteSession(self, self._new_tmp(index), index, term, conf)

    def begin_install(self, meta: SnapshotManifest) -> SnapshotInstallSession:
        """Start receiving the snapshot a leader described with ``meta``: pass its
        chunks to `SnapshotInstallSession.write_chunk`, then ``finish`` (or
        ``abort``). `InvalidSnapshotError` if ``meta`` is not acceptable (hostile
        file names, counts or sizes out of range, a bad configuration)."""
        check_snapshot_manifest(meta)
        return SnapshotInstallSession(self, self._new_tmp(meta.index), meta)

    # ---------------------------------------------------------------- reading

    def list(self) -> builtins.list[SnapshotManifest]:
        """Every snapshot whose metadata is valid and whose files are all present with
        their recorded sizes, oldest first. Others are skipped with a warning."""
        out = []
        with self._lock:  # not while a publication prunes
            for index in self._indexes():
                meta = self._try_meta(index)
                if meta is not None:
                    out.append(meta)
        return out

    def latest(self) -> SnapshotManifest | None:
        """The newest snapshot `list` would return, or None."""
        with self._lock:
            for index in reversed(self._indexes()):
                meta = self._try_meta(index)
                if meta is not None:
                    return meta
        return None

    def open(self, meta: SnapshotManifest) -> SnapshotReader:
        """A reader of the published snapshot ``meta`` describes; it pins the snapshot
        (pruning skips it) until closed. `StorageError` if it is not published."""
        self._check_open()
        path = os.path.join(self._dir, snapshot_dir_name(meta.index))
        with self._lock:
            if not os.path.isdir(path):
                raise StorageError(f"{path}: no such snapshot")
            self._pins[meta.index] += 1
        return SnapshotReader(self, meta, os.path.join(path, _DATA))

    def open_latest(self) -> SnapshotReader | None:
        """A reader of the snapshot `latest` would return, pinned in the same step
        (a publication cannot prune it in between), or None."""
        self._check_open()
        with self._lock:
            for index in reversed(self._indexes()):
                meta = self._try_meta(index)
                if meta is not None:
                    self._pins[index] += 1
                    path = os.path.join(self._dir, snapshot_dir_name(index), _DATA)
                    return SnapshotReader(self, meta, path)
        return None

    def verify(self, meta: SnapshotManifest) -> None:
        """Re-read every file of the snapshot and check its size and CRC32C against
        ``meta``; `CorruptSnapshotError` naming the first file that is missing,
        different, or not listed in ``meta``."""
        data = os.path.join(self._dir, snapshot_dir_name(meta.index), _DATA)
        try:
            present = set(os.listdir(data))
        except OSError as exc:
            raise CorruptSnapshotError(data, f"cannot list the snapshot's files: {exc}") from exc
        for extra in sorted(present - {f.name for f in meta.files}):
            raise CorruptSnapshotError(os.path.join(data, extra), "not listed in the metadata")
        for f in meta.files:
            path = os.path.join(data, f.name)
            try:
                fd = open_fd(path, os.O_RDONLY)
            except FileNotFoundError:
                raise CorruptSnapshotError(path, "missing") from None
            except OSError as exc:
                raise CorruptSnapshotError(path, f"cannot open: {exc}") from exc
            try:
                size, crc = checksum_fd(fd)
            except OSError as exc:
                raise CorruptSnapshotError(path, f"cannot read: {exc}") from exc
            finally:
                os.close(fd)
            if size != f.size:
                raise CorruptSnapshotError(path, f"{size} bytes, the metadata says {f.size}")
            if crc != f.crc32c:
                raise CorruptSnapshotError(
                    path, f"CRC32C {crc:#010x}, the metadata says {f.crc32c:#010x}"
                )

    def load_newest_valid(self) -> SnapshotReader | None:
        """A reader of the newest snapshot that passes `verify`, or None if none does.
        Each newer one that fails (or whose metadata is damaged) is logged with the
        file at fault and moved aside as ``corrupt-snapshot-*`` (never deleted), so
        `latest` and `list` no longer return it."""
        for index in reversed(self._indexes()):
            try:
                meta = self._read_meta(index)
                self.verify(meta)
            except CorruptSnapshotError as exc:
                with self._lock:
                    moved = self._quarantine(index)
                logger.error(
                    "%s: snapshot at index %d is damaged: %s; moved aside as %s, falling "
                    "back to the previous snapshot",
                    self._dir,
                    index,
                    exc,
                    moved,
                )
                continue
            return self.open(meta)
        return None

    def close(self) -> None:
        """Release the directory lock. Open readers stay readable; sessions can no
        longer publish."""
        with self._lock:
            self._closed = True
        self._release()

    # -------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("snapshot storage is closed")

    def _release(self) -> None:
        for attr in ("_dir_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)

    def _crash_point(self, where: str) -> None:
        """Test hook: called between the steps of a publication."""

    def _indexes(self) -> builtins.list[int]:
        self._check_open()
        found = []
        for name in os.listdir(self._dir):
            m = _SNAPSHOT_RE.match(name)
            if m is not None:
                found.append(int(m.group(1)))
        return sorted(found)

    def _read_meta(self, index: int) -> SnapshotManifest:
        """The metadata of the published snapshot at ``index``, checked against the
        directory (its name, its files' presence and sizes); `CorruptSnapshotError`."""
        snap = os.path.join(self._dir, snapshot_dir_name(index))
        path = os.path.join(snap, _META)
        try:
            with open(path, "rb") as meta_file:
                raw = meta_file.read(MAX_META_BYTES + 64)
        except OSError as exc:
            raise CorruptSnapshotError(path, f"cannot read: {exc}") from exc
        try:
            meta = decode_snapshot_manifest(raw)
        except InvalidSnapshotError as exc:
            raise CorruptSnapshotError(path, str(exc)) from None
        if meta.index != index:
            raise CorruptSnapshotError(path, f"metadata of index {meta.index} in {snap}")
        for f in meta.files:
            fpath = os.path.join(snap, _DATA, f.name)
            try:
                st = os.lstat(fpath)
            except OSError:
                raise CorruptSnapshotError(fpath, "missing") from None
            if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                raise CorruptSnapshotError(fpath, f"{st.st_size} bytes, the metadata says {f.size}")
        return meta

    def _try_meta(self, index: int) -> SnapshotManifest | None:
        try:
            return self._read_meta(index)
        except CorruptSnapshotError as exc:
            logger.warning("%s: skipping snapshot at index %d: %s", self._dir, index, exc)
            return None

    def _new_tmp(self, index: int) -> str:
        self._check_open()
        tmp = os.path.join(self._dir, f"tmp-{index:020d}-{secrets.token_hex(4)}")
        try:
            os.mkdir(tmp, 0o755)
            os.mkdir(os.path.join(tmp, _DATA), 0o755)
        except OSError as exc:
            raise StorageError(f"{tmp}: cannot create: {exc}") from exc
        return tmp

    def _discard(self, tmp: str) -> None:
        """Remove a session's temporary directory (best effort: leftovers go at the
        next open)."""
        shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: str, meta: SnapshotManifest) -> SnapshotManifest:
        """Steps 2 to 5 of the contract in the module docstring; the caller did 1."""
        target = os.path.join(self._dir, snapshot_dir_name(meta.index))
        try:
            raw = encode_snapshot_manifest(meta)
            fd = open_fd(os.path.join(tmp, _META), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_directory(tmp)
            self._crash_point("meta_written")
            with self._lock:
                self._check_open()
                if os.path.isdir(target):
                    existing = self._existing(target, meta.index)
                    if existing is not None:
                        self._discard(tmp)
                        return existing
                os.rename(tmp, target)
                self._crash_point("renamed")
                os.fsync(self._dir_fd)
                self._crash_point("published")
                try:
                    self._prune()
                except OSError as exc:  # published all the same; retried next time
                    logger.warning("%s: cannot prune old snapshots: %s", self._dir, exc)
        except OSError as exc:
            self._discard(tmp)
            raise StorageError(f"{target}: cannot publish snapshot: {exc}") from exc
        logger.info(
            "%s: published snapshot at index %d (term %d, %d files, %d bytes)",
            self._dir,
            meta.index,
            meta.term,
            len(meta.files),
            meta.total_size,
        )
        return meta

    def _existing(self, target: str, index: int) -> SnapshotManifest | None:
        """A valid snapshot already at ``target`` (kept: the new copy is discarded), or
        None after moving a damaged one aside. Called with the lock held."""
        try:
            meta = self._read_meta(index)
            self.verify(meta)
        except CorruptSnapshotError as exc:
            moved = self._quarantine(index)
            logger.error("%s: replacing damaged snapshot (%s); moved to %s", target, exc, moved)
            return None
        logger.info("%s: a snapshot at index %d exists already; keeping it", self._dir, index)
        return meta

    def _quarantine(self, index: int) -> str:
        """Move the snapshot at ``index`` aside (never deleted). Lock held."""
        name = f"corrupt-{snapshot_dir_name(index)}-{secrets.token_hex(4)}"
        os.rename(os.path.join(self._dir, snapshot_dir_name(index)), os.path.join(self._dir, name))
        os.fsync(self._dir_fd)
        return name

    def _prune(self) -> None:
        """Remove snapshots beyond the newest ``keep`` that no reader pins: renamed to
        ``trash-*`` first (one fsync of the root), then deleted. Lock held."""
        indexes = self._indexes()
        doomed = [i for i in indexes[: -self._keep] if not self._pins[i]]
        trash = []
        for index in doomed:
            name = f"trash-{snapshot_dir_name(index)}-{secrets.token_hex(4)}"
            os.rename(
                os.path.join(self._dir, snapshot_dir_name(index)), os.path.join(self._dir, name)
            )
            trash.append(os.path.join(self._dir, name))
        if trash:
            os.fsync(self._dir_fd)
            self._crash_point("pruned")
            for path in trash:
                shutil.rmtree(path, ignore_errors=True)

    def _unpin(self, index: int) -> None:
        with self._lock:
            self._pins[index] -= 1
            if self._pins[index] <= 0:
                del self._pins[index]
            if self._closed:
                return
            with contextlib.suppress(OSError):
                # What it pinned may be past the newest `keep` now.
                self._prune()

    def _remove_leftovers(self) -> None:
        removed = []
        for name in os.listdir(self._dir):
            path = os.path.join(self._dir, name)
            if _LEFTOVER_RE.match(name) and os.path.isdir(path):
                shutil.rmtree(path)
                removed.append(name)
        if removed:
            logger.warning(
                "%s: removed leftovers of an interrupted snapshot: %s",
                self._dir,
                ", ".join(sorted(removed)),
            )
            os.fsync(self._dir_fd)


class SnapshotReader:
    """An open, pinned, published snapshot: its files are in `directory`; chunks of
    them (for sending to a follower) come from `read_chunk`. Close it (or use it as
    a context manager) to unpin it. Used by one thread at a time."""

    def __init__(self, storage: SnapshotStorage, meta: SnapshotManifest, directory: str) -> None:
        self._storage = storage
        self._meta = meta
        self._directory = directory
        self._names = {f.name: f for f in meta.files}
        self._fd = -1
        self._fd_name = ""
        self._closed = False

    @property
    def meta(self) -> SnapshotManifest:
        """The snapshot's metadata."""
        return self._meta

    @property
    def directory(self) -> str:
        """The directory holding the snapshot's files (read-only by convention)."""
        return self._directory

    @property
    def index(self) -> int:
        """Last included index."""
        return self._meta.index

    @property
    def term(self) -> int:
        """Term of the entry at `index`."""
        return self._meta.term

    @property
    def conf(self) -> ConfState:
        """The configuration at `index`."""
        return self._meta.conf

    @property
    def user_meta(self) -> bytes:
        """The state machine's opaque metadata."""
        return self._meta.user_meta

    def read_chunk(self, name: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of file ``name`` from ``offset`` (fewer only at its end;
        empty at or past it). `InvalidSnapshotError` for a file not in the snapshot,
        a negative offset or a size outside ``[0, MAX_CHUNK_BYTES]``."""
        if self._closed:
            raise ValueError("snapshot reader is closed")
        check_file_name(name)
        if name not in self._names:
            raise InvalidSnapshotError(f"snapshot {self.index} has no file {name!r}")
        if offset < 0 or not 0 <= size <= MAX_CHUNK_BYTES:
            raise InvalidSnapshotError(f"bad chunk: offset {offset}, size {size}")
        if self._fd_name != name:
            self._close_fd()
            self._fd = open_fd(os.path.join(self._directory, name), os.O_RDONLY)
            self._fd_name = name
        parts = []
        while size > 0:
            got = os.pread(self._fd, size, offset)
            if not got:
                break
            parts.append(got)
            offset += len(got)
            size -= len(got)
        return b"".join(parts)

    def close(self) -> None:
        """Release the reader: its snapshot may be pruned from now on."""
        if self._closed:
            return
        self._closed = True
        self._close_fd()
        self._storage._unpin(self._meta.index)

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._fd_name = ""

    def __enter__(self) -> SnapshotReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
