"""`KvStateMachine`: applies KV commands to the LMDB store, deterministically.

Theory of operation
-------------------
`on_apply` gets a batch of committed entries and applies them in one LMDB
write transaction, which also records the index of the last one
(`pyjraft.kv.store`). So the store is always the effect of a prefix of the
log, and `last_applied_index` tells the node where to resume after a
restart; entries at or below it are skipped (answered None), whoever
re-delivers them.

Every entry is decoded and checked again (`pyjraft.kv.protocol.check_command`
with `HARD_LIMITS`): an entry that does not decode or check gets an error
result, ``{"error": "invalid_request", ...}``, and changes nothing -- the
machine never raises because of an entry's content (an exception stops the
node). What it raises for is the engine failing (a full disk, say), which
would otherwise let this replica diverge. When LMDB's map fills up, the
batch is aborted, the map doubled and the batch applied again.

Results are msgpack-ready dicts, key-values in their wire form (see
`pyjraft.kv.types`); the service passes them to the client unchanged.

Snapshots follow the node's contract: `on_snapshot_save` opens an MVCC read
transaction on the loop (microseconds; applies resume right after) and
returns the copy for a worker thread; `on_snapshot_load` swaps the files
(see `KvStore.replace_from`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import lmdb
import msgpack  # type: ignore[import-untyped]

from pyjraft.core.types import Entry
from pyjraft.kv.protocol import HARD_LIMITS, InvalidRequest, check_command, unpack_command
from pyjraft.kv.store import DEFAULT_MAP_SIZE, STORE_FORMAT, KvStore, WriteBatch
from pyjraft.node.state_machine import StateMachine

log = logging.getLogger("pyjraft.kv")


class SnapshotWriter(Protocol):
    """What `KvStateMachine.on_snapshot_save` uses of the node's snapshot writer."""

    index: int
    term: int
    directory: str
    user_meta: bytes


class SnapshotReader(Protocol):
    """What `KvStateMachine.on_snapshot_load` uses of the node's snapshot reader."""

    index: int
    term: int
    directory: str


_MAX_GROWTHS = 8  # map doublings per batch before giving up (x256)

_FIELD = {"version": 4, "create_revision": 2, "mod_revision": 3}


def _compare(batch: WriteBatch, c: Sequence[Any]) -> bool:
    key, target, op, operand = c
    kv = batch.get(key)
    if target == "value":
        actual = None if kv is None else kv[1]
        if op == "==":
            return bool(actual == operand)
        if op == "!=":
            return bool(actual != operand)
        if actual is None or operand is None:
            return False
        return bool(actual < operand) if op == "<" else bool(actual > operand)
    n = 0 if kv is None else kv[_FIELD[target]]
    if op == "==":
        return bool(n == operand)
    if op == "!=":
        return bool(n != operand)
    return bool(n < operand) if op == "<" else bool(n > operand)


def _txn_op(batch: WriteBatch, o: Sequence[Any]) -> dict[str, Any]:
    name = o[0]
    if name == "put":
        return {"prev": batch.put(o[1], o[2])}
    if name == "delete":
        prev = batch.delete(o[1])
        return {"deleted": prev is not None, "prev": prev}
    if name == "delete_range":
        n, prevs = batch.delete_range(o[1], o[2], o[3])
        return {"deleted": n, "prev_kvs": prevs}
    if name == "get":
        return {"kv": batch.get(o[1])}
    # scan: checked by check_command, the only op left
    kvs, more = batch.scan(o[1], o[2], o[3], o[4], o[5], o[6])
    return {"kvs": kvs, "more": more}


def _execute(batch: WriteBatch, cmd: Sequence[Any]) -> Any:
    op = cmd[1]
    if op == "put":
        prev = batch.put(cmd[2], cmd[3])
        return {"revision": batch.revision, "prev": prev}
    if op == "put_if_absent":
        old = batch.get(cmd[2])
        if old is not None:
            return {"succeeded": False, "revision": batch.revision, "prev": old}
        batch.put(cmd[2], cmd[3])
        return {"succeeded": True, "revision": batch.revision, "prev": None}
    if op == "cas":
        key, value, target, expected = cmd[2], cmd[3], cmd[4], cmd[5]
        old = batch.get(key)
        if target == "value":
            ok = (old is None) if expected is None else (old is not None and old[1] == expected)
        else:
            ok = (0 if old is None else old[3]) == expected
        if ok:
            batch.put(key, value)
        return {"succeeded": ok, "revision": batch.revision, "prev": old}
    if op == "delete":
        prev = batch.delete(cmd[2])
        return {"deleted": prev is not None, "revision": batch.revision, "prev": prev}
    if op == "delete_range":
        n, prevs = batch.delete_range(cmd[2], cmd[3], cmd[4])
        return {"deleted": n, "revision": batch.revision, "prev_kvs": prevs}
    if op == "txn":
        succeeded = all(_compare(batch, c) for c in cmd[2])
        results = [_txn_op(batch, o) for o in (cmd[3] if succeeded else cmd[4])]
        return {"succeeded": succeeded, "revision": batch.revision, "results": results}
    if op == "compact":
        revision = cmd[2]
        if revision > batch.revision:
            return {
                "error": "future_revision",
                "message": f"cannot compact at {revision}: the store is at revision "
                f"{batch.revision}",
            }
        batch.compact(revision)
        return {"revision": batch.revision, "compact_revision": batch.compact_revision}
    return None  # barrier


class KvStateMachine(StateMachine):
    """The replicated KV store's state machine over a `KvStore` at ``path``.

    ``add_listener`` registers a callable run (on the loop) after every
    batch that changed the store and after a snapshot load: the service
    wakes its watches with it.
    """

    def __init__(self, path: str, *, map_size: int = DEFAULT_MAP_SIZE) -> None:
        self.store = KvStore(path, map_size=map_size)
        self._listeners: list[Callable[[], None]] = []
        self.stats: dict[str, int] = {
            "entries": 0,
            "skipped": 0,
            "invalid": 0,
            "commits": 0,
            "map_grown": 0,
            "snapshots_saved": 0,
            "snapshots_loaded": 0,
        }
        """Counters: entries handed to `on_apply`, skipped (at or below the stored index),
        invalid, LMDB commits, map growths, snapshots saved and loaded."""

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after each change of the store (see the class doc)."""
        self._listeners.append(fn)

    def last_applied_index(self) -> int:
        """The last log index whose effect is durably in the store."""
        return self.store.applied_index

    def on_apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply ``entries`` in one LMDB transaction; one result per entry."""
        for attempt in range(_MAX_GROWTHS + 1):
            try:
                results, changed = self._apply(entries)
                break
            except lmdb.MapFullError:
                # The batch was aborted whole: grow the map and apply it again.
                if attempt == _MAX_GROWTHS or not self.store.grow_map():
                    raise
                self.stats["map_grown"] += 1
                log.warning("LMDB map full: grown to %d bytes", self.store.env.info()["map_size"])
        if changed:
            self._notify()
        return results

    def _apply(self, entries: Sequence[Entry]) -> tuple[list[Any], bool]:
        store = self.store
        applied = store.applied_index
        results: list[Any] = []
        append = results.append
        batch: WriteBatch | None = None
        stats = self.stats
        try:
            for e in entries:
                if e.index <= applied:
                    stats["skipped"] += 1
                    append(None)
                    continue
                try:
                    cmd = unpack_command(e.data)
                    check_command(cmd, HARD_LIMITS)
                except InvalidRequest as ex:
                    stats["invalid"] += 1
                    log.warning("entry %d is not a valid KV command: %s", e.index, ex)
                    append({"error": "invalid_request", "message": str(ex)})
                    continue
                if batch is None:
                    batch = store.write()
                batch.begin_command()
                append(_execute(batch, cmd))
            stats["entries"] += len(entries)
            if batch is None or not batch.changed:
                return results, False
            batch.commit(entries[-1].index)
            stats["commits"] += 1
            return results, True
        finally:
            if batch is not None:
                batch.abort()  # no-op after a commit

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("KV store listener failed")

    # -- snapshots ------------------------------------------------------------------

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """Capture the store as of ``writer.index`` (a read transaction, on the
        loop) and return the copy into ``writer.directory`` for a worker thread."""
        store = self.store
        if store.applied_index > writer.index:
            raise RuntimeError(
                f"snapshot at index {writer.index} asked of a store that has applied "
                f"{store.applied_index}: refusing to save a state from the future"
            )
        if store.applied_index < writer.index:
            # Entries after the stored index changed nothing: the state IS the
            # one at writer.index. Record it, so the copy says so itself.
            store.force_applied(writer.index)
        txn = store.begin_copy()
        writer.user_meta = msgpack.packb(
            {"format": STORE_FORMAT, "revision": store.revision, "index": writer.index}
        )
        directory = writer.directory
        self.stats["snapshots_saved"] += 1

        def copy() -> None:
            store.copy_to(directory, txn)

        return copy

    def on_snapshot_load(self, reader: SnapshotReader) -> Any:
        """Replace the store with the snapshot in ``reader.directory``; waits
        (without blocking the loop) for a snapshot copy still in flight."""
        if self.store.wait_copies(timeout=0):
            self._load(reader)
            return None
        return self._load_after_copies(reader)

    async def _load_after_copies(self, reader: SnapshotReader) -> None:
        await asyncio.to_thread(self.store.wait_copies)
        self._load(reader)

    def _load(self, reader: SnapshotReader) -> None:
        self.store.replace_from(reader.directory, reader.index)
        self.stats["snapshots_loaded"] += 1
        log.info(
            "KV store loaded from the snapshot at index %d (revision %d)",
            reader.index,
            self.store.revision,
        )
        self._notify()

    def close(self) -> None:
        """Close the store (after the node and the service are done with it)."""
        self.store.close()


__all__ = ["KvStateMachine", "SnapshotReader", "SnapshotWriter"]
