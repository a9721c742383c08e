"""`KvStore`: the KV state in LMDB -- key-values, the event history, the applied index.

Theory of operation
-------------------
One LMDB environment (a directory holding ``data.mdb`` and ``lock.mdb``)
with three named databases:

* ``kv``: key -> ``create_revision, mod_revision, version`` (3 x u64,
  big-endian) followed by the value.
* ``events``: ``(revision, sub)`` (u64, u32 big-endian, so they sort in
  history order) -> ``type, create_revision, version, key length`` (u8, 2 x
  u64, u16) followed by the key and the value. ``sub`` numbers the changes
  of one revision (a transaction or a range delete makes several).
* ``meta``: ``format``, ``applied`` (the last log index whose effect is
  stored), ``revision``, ``compact`` (events before it are gone) and
  ``history_bytes`` (the size of the events kept), each a u64.

Writes go into one LMDB write transaction, the *pending batch*
(`WriteBatch`), which stays open across apply calls until `KvStore.flush`
commits it together with ``applied``, the index of the last entry it
holds: after a crash the store holds exactly the effect of the log up to
``applied``, never a part of a batch, and replaying the log from
``applied + 1`` rebuilds the rest. The owner (`pyjraft.kv.machine`) decides
when to flush: after every apply call, or on a short timer as etcd commits
its backend every 100 ms. Until then the batch's changes are visible to
readers of this process -- `read` hands out the pending transaction when
there is one -- and to nobody else, and `applied_index`, `revision` and the
other cached values are those of the batch, while `durable_index` is what
the files hold.

Sync settings (chosen deliberately; see the README): ``sync=True,
metasync=False``. LMDB writes a commit's data pages, fdatasyncs them, then
writes the meta page that makes the commit visible, *without* syncing it;
the next commit's fdatasync carries it to disk. LMDB documents this mode as
keeping the database intact after any crash (atomicity and consistency
hold), at the price of possibly losing the last committed transaction on a
power failure. We can afford that loss and nothing more: the raft log is
the durable record, ``applied`` rolls back together with the data it
describes, and the node replays the entries after it. One fdatasync per
commit, against two with ``metasync=True``. ``sync=False`` (no fdatasync
at all) is not offered: LMDB may then write a meta page before the data
pages it points to, and a power failure can leave a corrupt database.
``writemap`` stays off for the same reason (a stray write through the map,
or out-of-order page writeback, could corrupt it).

Readers of committed state use MVCC read transactions: a read never blocks
the writer, and the writer never changes what an open read transaction
sees. The snapshot copy (`copy_to`) relies on it: a read transaction opened
on the event loop right after a flush is copied on a worker thread while
applies go on. Everything else (applies, reads, watches, flushes) runs on
the event loop's thread: LMDB ties a write transaction to its thread.
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from collections.abc import Iterator
from typing import Any

import lmdb

from pyjraft.kv.protocol import LMDB_MAX_KEY_BYTES

STORE_FORMAT = 1
"""Version of the on-disk layout (``meta/format``)."""

DEFAULT_MAP_SIZE = 64 << 30
"""Initial LMDB map size: address space reserved, not disk used (the file
grows as data is written). The map doubles when it fills."""

LMDB_DURABILITY: dict[str, bool] = {"sync": True, "metasync": False, "writemap": False}
"""The LMDB settings that decide what a crash can do (see the module doc): one
fdatasync per commit, the meta page carried by the next one, no writable map."""

_U64 = struct.Struct(">Q")
_KV_HEADER = struct.Struct(">QQQ")  # create_revision, mod_revision, version
_KV_HEADER_SIZE = _KV_HEADER.size
_EVENT_KEY = struct.Struct(">QI")  # revision, sub
_EVENT_HEADER = struct.Struct(">BQQH")  # type, create_revision, version, key length
_EVENT_HEADER_SIZE = _EVENT_HEADER.size
EVENT_OVERHEAD = _EVENT_KEY.size + _EVENT_HEADER_SIZE
"""Bytes an event costs beyond its key and value (counted in ``history_bytes``)."""

PUT = 0
"""Event type of a put."""
DELETE = 1
"""Event type of a delete."""

_META_KEYS = (b"applied", b"revision", b"compact", b"history_bytes")


class KvStoreError(Exception):
    """The store's files are unusable (wrong format, not a KV store, unreadable)."""


def kv_wire(key: bytes, rec: bytes, keys_only: bool = False) -> list[Any]:
    """The wire form ``[key, value, create, mod, version]`` of a stored record."""
    create, mod, version = _KV_HEADER.unpack_from(rec)
    return [key, b"" if keys_only else rec[_KV_HEADER_SIZE:], create, mod, version]


def _u64(v: bytes | None) -> int:
    return 0 if v is None else int(_U64.unpack(v)[0])


class KvStore:
    """The LMDB environment of one KV replica, its pending batch, and the cached
    meta values.

    ``applied_index``, ``revision``, ``compact_revision`` and ``history_bytes``
    include the pending batch; ``durable_index`` is the ``applied`` of the
    last commit.
    """

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.path = path
        self._map_size = map_size
        self._copies = 0
        self._copies_done = threading.Condition()
        self._batch: WriteBatch | None = None
        self.applied_index = 0
        self.durable_index = 0
        self.revision = 0
        self.compact_revision = 0
        self.history_bytes = 0
        self._open()

    def _open(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        try:
            self.env = lmdb.open(
                self.path,
                map_size=self._map_size,
                max_dbs=4,
                readahead=False,  # random access: reading ahead only evicts pages
                max_readers=1024,
                max_spare_txns=16,
                **LMDB_DURABILITY,
            )
        except lmdb.Error as e:
            raise KvStoreError(f"cannot open the KV store at {self.path}: {e}") from e
        self.env.reader_check()  # free the reader slots of dead processes
        self._map_size = max(self._map_size, self.env.info()["map_size"])
        problem = ""
        with self.env.begin(write=True) as txn:
            self.kv_db = self.env.open_db(b"kv", txn=txn)
            self.events_db = self.env.open_db(b"events", txn=txn)
            self.meta_db = self.env.open_db(b"meta", txn=txn)
            fmt = txn.get(b"format", db=self.meta_db)
            if fmt is None:
                if txn.stat(self.kv_db)["entries"] or txn.stat(self.events_db)["entries"]:
                    problem = "data without a format marker"
                else:
                    txn.put(b"format", _U64.pack(STORE_FORMAT), db=self.meta_db)
            elif _u64(fmt) != STORE_FORMAT:
                problem = f"store format {_u64(fmt)}, this version reads {STORE_FORMAT}"
            self.applied_index, self.revision, self.compact_revision, self.history_bytes = (
                _u64(txn.get(k, db=self.meta_db)) for k in _META_KEYS
            )
        if problem:
            self.env.close()
            raise KvStoreError(f"{self.path}: {problem}")
        self.durable_index = self.applied_index
        self._durable = self._values()

    def _values(self) -> tuple[int, int, int, int]:
        return self.applied_index, self.revision, self.compact_revision, self.history_bytes

    def close(self) -> None:
        """Flush the pending batch and close (waits for snapshot copies in flight)."""
        self.flush()
        self.wait_copies()
        self.env.close()

    # -- reading ------------------------------------------------------------------

    def read(self) -> ReadView:
        """A transaction to read in (a context manager): the pending batch's when
        there is one, else a new read transaction. Keep it short on the loop."""
        if self._batch is not None:
            return ReadView(self._batch.txn, owned=False)
        return ReadView(self.env.begin(), owned=True)

    def get(self, txn: lmdb.Transaction[bytes], key: bytes) -> list[Any] | None:
        """``key``'s wire key-value in ``txn``, or None."""
        rec = txn.get(key, db=self.kv_db)
        return None if rec is None else kv_wire(key, rec)

    def scan(
        self,
        txn: lmdb.Transaction[bytes],
        start: bytes,
        end: bytes | None,
        limit: int,
        reverse: bool = False,
        keys_only: bool = False,
        max_bytes: int = 1 << 62,
    ) -> tuple[list[list[Any]], bool]:
        """Key-values of ``[start, end)`` in order (descending if ``reverse``):
        at most ``limit``, and no more once ``max_bytes`` of keys and values are
        in (at least one). Also returns whether more were left in the range."""
        out: list[list[Any]] = []
        size = 0
        with txn.cursor(self.kv_db) as cur:
            it: Iterator[tuple[bytes, bytes]]
            if not reverse:
                if not (cur.set_range(start) if start else cur.first()):
                    return out, False
                it = cur.iternext()
                for k, rec in it:
                    if end is not None and k >= end:
                        return out, False
                    if len(out) >= limit or size >= max_bytes:
                        return out, True
                    w = kv_wire(k, rec, keys_only)
                    size += len(k) + len(w[1])
                    out.append(w)
                return out, False
            # The last key before end: set_range finds the first at or after it.
            positioned = cur.last() if end is None or not cur.set_range(end) else cur.prev()
            if not positioned:
                return out, False
            it = cur.iterprev()
            for k, rec in it:
                if k < start:
                    return out, False
                if len(out) >= limit or size >= max_bytes:
                    return out, True
                w = kv_wire(k, rec, keys_only)
                size += len(k) + len(w[1])
                out.append(w)
            return out, False

    def events(
        self,
        txn: lmdb.Transaction[bytes],
        start_revision: int,
        start_sub: int,
        start: bytes,
        end: bytes | None,
        max_events: int,
        max_bytes: int,
        max_scanned: int = 100_000,
    ) -> tuple[list[list[Any]], tuple[int, int]]:
        """Events from ``(start_revision, start_sub)`` on whose key is in
        ``[start, end)``, in history order, as wire arrays ``[type, key, value,
        create, mod, version]``; and the cursor to continue from. Stops after
        ``max_events``, after ``max_bytes`` of keys and values (at least one
        event) or after looking at ``max_scanned`` events of any key.

        The caller checks ``start_revision`` against `compact_revision` first.
        """
        out: list[list[Any]] = []
        size = 0
        scanned = 0
        # Past the last event, continue after the store's revision -- or where
        # asked, if that is later (a lagging replica must not move a cursor back).
        end_cursor = max((self.revision + 1, 0), (start_revision, start_sub))
        with txn.cursor(self.events_db) as cur:
            if not cur.set_range(_EVENT_KEY.pack(start_revision, start_sub)):
                return out, end_cursor
            for k, v in cur.iternext():
                rev, sub = _EVENT_KEY.unpack(k)
                if len(out) >= max_events or size >= max_bytes or scanned >= max_scanned:
                    return out, (rev, sub)
                scanned += 1
                kind, create, version, klen = _EVENT_HEADER.unpack_from(v)
                key = v[_EVENT_HEADER_SIZE : _EVENT_HEADER_SIZE + klen]
                if key < start or (end is not None and key >= end):
                    continue
                value = v[_EVENT_HEADER_SIZE + klen :]
                out.append([kind, key, value, create, rev, version])
                size += klen + len(value)
        return out, end_cursor

    # -- writing ------------------------------------------------------------------

    @property
    def pending(self) -> WriteBatch | None:
        """The open batch, not yet committed (None when everything is durable)."""
        return self._batch

    def write(self) -> WriteBatch:
        """The pending batch, begun if there is none."""
        if self._batch is None:
            self._batch = WriteBatch(self)
        return self._batch

    def flush(self) -> bool:
        """Commit the pending batch (one fdatasync) if it changed anything, else
        drop it; return whether a commit happened."""
        batch = self._batch
        if batch is None:
            return False
        if not batch.changed:
            self.discard()
            return False
        batch.commit()
        self._batch = None
        self.durable_index = self.applied_index
        self._durable = self._values()
        return True

    def discard(self) -> None:
        """Abort the pending batch: the store is again what its files hold."""
        batch, self._batch = self._batch, None
        if batch is not None:
            batch.abort()
            self.applied_index, self.revision, self.compact_revision, self.history_bytes = (
                self._durable
            )

    def grow_map(self) -> bool:
        """Double the map size after `lmdb.MapFullError`; False when a snapshot
        copy is in flight (LMDB must not be resized under a reader). No batch
        may be pending."""
        assert self._batch is None, "grow_map with a pending batch"
        with self._copies_done:
            if self._copies:
                return False
            self._map_size *= 2
            self.env.set_mapsize(self._map_size)
            return True

    # -- snapshots ------------------------------------------------------------------

    def begin_copy(self) -> lmdb.Transaction[bytes]:
        """The read transaction a snapshot copies, of the durable state (flush
        first); counted until `copy_to` ends."""
        assert self._batch is None, "a snapshot copy must not miss a pending batch"
        with self._copies_done:
            self._copies += 1
        try:
            return self.env.begin()
        except BaseException:
            self._end_copy()
            raise

    def _end_copy(self) -> None:
        with self._copies_done:
            self._copies -= 1
            self._copies_done.notify_all()

    def copy_to(self, directory: str, txn: lmdb.Transaction[bytes]) -> None:
        """Write the state ``txn`` sees to ``directory/data.mdb``, compacted and
        fsynced; end ``txn``. Blocking: runs on a worker thread."""
        try:
            os.makedirs(directory, exist_ok=True)
            self.env.copy(directory, compact=True, txn=txn)
            _fsync_file(os.path.join(directory, "data.mdb"))
            _fsync_file(directory)
        finally:
            txn.abort()
            self._end_copy()

    def wait_copies(self, timeout: float | None = None) -> bool:
        """Block until no snapshot copy is in flight; False on timeout."""
        with self._copies_done:
            return self._copies_done.wait_for(lambda: self._copies == 0, timeout)

    def replace_from(self, directory: str, applied_index: int) -> None:
        """Replace the whole store with the copy in ``directory`` (made by
        `copy_to`), recording ``applied_index``; the pending batch is dropped.
        Checks the copy before touching the current files; swaps ``data.mdb``
        atomically (a crash leaves either store whole). Blocking; no copy may
        be in flight (see `wait_copies`)."""
        source = os.path.join(directory, "data.mdb")
        check_copy(source)
        tmp = os.path.join(self.path, "data.mdb.incoming")
        shutil.copyfile(source, tmp)
        _fsync_file(tmp)
        self.discard()
        self.env.close()
        os.replace(tmp, os.path.join(self.path, "data.mdb"))
        _fsync_file(self.path)
        self._open()
        if self.applied_index != applied_index:
            # The copy's own index is at most the snapshot's (trailing entries
            # that changed nothing are not written): record the snapshot's.
            self.force_applied(applied_index)

    def force_applied(self, index: int) -> None:
        """Record ``index`` as applied and durable (flushing what is pending)."""
        self.flush()
        with self.env.begin(write=True) as txn:
            txn.put(b"applied", _U64.pack(index), db=self.meta_db)
        self.applied_index = self.durable_index = index
        self._durable = self._values()


class ReadView:
    """A transaction to read in, as a context manager: ends it on exit when it
    is a read transaction of its own, leaves the pending batch's alone."""

    __slots__ = ("owned", "txn")

    def __init__(self, txn: lmdb.Transaction[bytes], *, owned: bool) -> None:
        self.txn = txn
        self.owned = owned

    def __enter__(self) -> lmdb.Transaction[bytes]:
        return self.txn

    def __exit__(self, *exc: object) -> None:
        if self.owned:
            self.txn.abort()


def check_copy(data_file: str) -> dict[str, int]:
    """Open the LMDB file ``data_file`` read-only and return its meta values;
    `KvStoreError` if it is not a KV store of this format."""
    if not os.path.isfile(data_file):
        raise KvStoreError(f"{data_file}: no such file")
    try:
        env = lmdb.open(
            data_file, subdir=False, readonly=True, lock=False, max_dbs=4, map_size=1 << 20
        )
    except lmdb.Error as e:
        raise KvStoreError(f"{data_file}: not an LMDB file: {e}") from e
    try:
        with env.begin() as txn:
            try:
                meta = env.open_db(b"meta", txn=txn, create=False)
                env.open_db(b"kv", txn=txn, create=False)
                env.open_db(b"events", txn=txn, create=False)
            except lmdb.Error as e:
                raise KvStoreError(f"{data_file}: not a KV store: {e}") from e
            fmt = _u64(txn.get(b"format", db=meta))
            if fmt != STORE_FORMAT:
                raise KvStoreError(f"{data_file}: store format {fmt}, expected {STORE_FORMAT}")
            return {k.decode(): _u64(txn.get(k, db=meta)) for k in _META_KEYS}
    finally:
        env.close()


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WriteBatch:
    """The changes not yet committed: one LMDB write transaction (the store's
    pending batch; see `KvStore.write`).

    Revisions: `begin_command` starts a command; its first change bumps the
    store revision, and every change of the command is an event of that
    revision (``sub`` 0, 1, ...). `publish` makes the batch's values the
    store's (what readers of the pending transaction see); `KvStore.flush`
    commits them with ``applied``.
    """

    def __init__(self, store: KvStore) -> None:
        self.store = store
        self.txn: lmdb.Transaction[bytes] = store.env.begin(write=True)
        self.applied_index = store.applied_index
        self.revision = store.revision
        self.compact_revision = store.compact_revision
        self.history_bytes = store.history_bytes
        self.changed = False
        self._in_command_rev = 0  # the command's revision once it changed something
        self._sub = 0
        self._kv = store.kv_db
        self._events = store.events_db

    def begin_command(self) -> None:
        """The next changes belong to a new command (and so a new revision)."""
        self._in_command_rev = 0

    def publish(self, applied_index: int) -> None:
        """Entries up to ``applied_index`` are in the batch: show its values."""
        self.applied_index = applied_index
        s = self.store
        s.applied_index = applied_index
        s.revision = self.revision
        s.compact_revision = self.compact_revision
        s.history_bytes = self.history_bytes

    def _rev(self) -> int:
        if not self._in_command_rev:
            self.revision += 1
            self._in_command_rev = self.revision
            self._sub = 0
            self.changed = True
        return self._in_command_rev

    def _event(self, kind: int, key: bytes, value: bytes, create: int, version: int) -> None:
        rev = self._in_command_rev
        data = _EVENT_HEADER.pack(kind, create, version, len(key)) + key + value
        self.txn.put(_EVENT_KEY.pack(rev, self._sub), data, db=self._events)
        self._sub += 1
        self.history_bytes += len(data) + _EVENT_KEY.size

    def get(self, key: bytes) -> list[Any] | None:
        """``key``'s wire key-value, seeing this batch's changes."""
        rec = self.txn.get(key, db=self._kv)
        return None if rec is None else kv_wire(key, rec)

    def put(self, key: bytes, value: bytes) -> list[Any] | None:
        """Set ``key``; return its previous wire key-value (or None)."""
        rev = self._rev()
        old = self.txn.get(key, db=self._kv)
        if old is None:
            create, version = rev, 1
            prev = None
        else:
            create, mod, version = _KV_HEADER.unpack_from(old)
            prev = [key, old[_KV_HEADER_SIZE:], create, mod, version]
            version += 1
        txn = self.txn
        txn.put(key, _KV_HEADER.pack(create, rev, version) + value, db=self._kv)
        # The event, inline (the hot path of every put on every replica).
        data = _EVENT_HEADER.pack(PUT, create, version, len(key)) + key + value
        txn.put(_EVENT_KEY.pack(rev, self._sub), data, db=self._events)
        self._sub += 1
        self.history_bytes += len(data) + _EVENT_KEY.size
        return prev

    def delete(self, key: bytes) -> list[Any] | None:
        """Delete ``key``; return its wire key-value (None: it was absent, and
        nothing changed)."""
        old = self.txn.get(key, db=self._kv)
        if old is None:
            return None
        self._rev()
        self.txn.delete(key, db=self._kv)
        self._event(DELETE, key, b"", 0, 0)
        return kv_wire(key, old)

    def delete_range(
        self, start: bytes, end: bytes | None, want_prev: bool
    ) -> tuple[int, list[list[Any]]]:
        """Delete every key of ``[start, end)``; return how many, and (if
        ``want_prev``) their wire key-values."""
        doomed: list[tuple[bytes, bytes]] = []
        with self.txn.cursor(self._kv) as cur:
            if cur.set_range(start) if start else cur.first():
                for k, rec in cur.iternext():
                    if end is not None and k >= end:
                        break
                    doomed.append((k, rec))
        prevs: list[list[Any]] = []
        for k, rec in doomed:
            self._rev()
            self.txn.delete(k, db=self._kv)
            self._event(DELETE, k, b"", 0, 0)
            if want_prev:
                prevs.append(kv_wire(k, rec))
        return len(doomed), prevs

    def scan(
        self,
        start: bytes,
        end: bytes | None,
        limit: int,
        reverse: bool,
        keys_only: bool,
        max_bytes: int,
    ) -> tuple[list[list[Any]], bool]:
        """`KvStore.scan` inside this batch."""
        return self.store.scan(self.txn, start, end, limit, reverse, keys_only, max_bytes)

    def compact(self, revision: int) -> None:
        """Drop the events of revisions before ``revision`` (if not already);
        the caller checks ``revision <= self.revision``."""
        if revision <= self.compact_revision:
            return
        bound = _EVENT_KEY.pack(revision, 0)
        with self.txn.cursor(self._events) as cur:
            if cur.first():
                while True:
                    k = cur.key()  # b"" once the cursor ran off the end
                    if not k or k >= bound:
                        break
                    self.history_bytes -= len(k) + len(cur.value())
                    cur.delete()  # and move to the next record
        self.compact_revision = revision
        self.changed = True

    def commit(self) -> None:
        """Store ``applied`` and the meta values with the changes and commit (one
        fdatasync). Use `KvStore.flush`, which also updates the store."""
        meta = self.store.meta_db
        txn = self.txn
        txn.put(b"applied", _U64.pack(self.applied_index), db=meta)
        txn.put(b"revision", _U64.pack(self.revision), db=meta)
        txn.put(b"compact", _U64.pack(self.compact_revision), db=meta)
        txn.put(b"history_bytes", _U64.pack(self.history_bytes), db=meta)
        txn.commit()

    def abort(self) -> None:
        """Drop every change of the batch. Use `KvStore.discard`."""
        self.txn.abort()


__all__ = [
    "DEFAULT_MAP_SIZE",
    "DELETE",
    "EVENT_OVERHEAD",
    "LMDB_MAX_KEY_BYTES",
    "PUT",
    "STORE_FORMAT",
    "KvStore",
    "KvStoreError",
    "ReadView",
    "WriteBatch",
    "check_copy",
    "kv_wire",
]
