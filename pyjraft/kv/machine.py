"""`KvStateMachine`: applies KV commands to the LMDB store, deterministically.

Theory of operation
-------------------
`on_apply` gets a batch of committed entries and applies them to the
store's pending LMDB write transaction (`pyjraft.kv.store`), which records
the index of the last one when it commits. So the store's files always
hold the effect of a prefix of the log, and `last_applied_index` tells the
node where to resume after a restart; entries at or below the applied index
are skipped (answered None), whoever re-delivers them.

When to commit (``commit_delay``): 0 commits at the end of every
`on_apply` call, one fdatasync per batch on the apply path. A positive delay
commits on a timer of the event loop (and sooner once ``commit_max_entries``
are pending), as etcd commits its backend every 100 ms: the fdatasync leaves
the write path, and a batch of several apply calls shares it. Nothing
acknowledged is put at risk: an acknowledged write is durable in a majority
of raft logs, and a replica that crashes with applies not yet committed
re-applies them from its log (log compaction follows snapshots, which
commit first). Reads see applied state either way (`KvStore.read`).

Every entry is decoded and checked again (`pyjraft.kv.protocol.check_command`
with `HARD_LIMITS`): an entry that does not decode or check gets an error
result, ``{"error": "invalid_request", ...}``, and changes nothing -- the
machine never raises because of an entry's content (an exception stops the
node). What it raises for is the engine failing (a full disk, say), which
would otherwise let this replica diverge. When LMDB's map fills up, the
pending batch is aborted, the map doubled, and the uncommitted entries
(kept for this) applied again.

Results are msgpack-ready dicts, key-values in their wire form (see
`pyjraft.kv.types`); the service passes them to the client unchanged.

Snapshots follow the node's contract: `on_snapshot_save` commits what is
pending and opens an MVCC read transaction on the loop (applies resume right
after) and returns the copy for a worker thread; `on_snapshot_load` swaps
the files (see `KvStore.replace_from`).
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

    ``commit_delay`` (seconds) and ``commit_max_entries`` say when applied
    entries are committed to LMDB (see the module doc); a positive delay
    needs `on_apply` to run on an event loop (as the node runs it).
    ``add_listener`` registers a callable run (on the loop) after every apply
    that changed the store and after a snapshot load: the service wakes its
    watches with it.
    """

    def __init__(
        self,
        path: str,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        commit_delay: float = 0.0,
        commit_max_entries: int = 10_000,
    ) -> None:
        if commit_delay < 0 or commit_max_entries < 1:
            raise ValueError("need commit_delay >= 0 and commit_max_entries >= 1")
        self.store = KvStore(path, map_size=map_size)
        self.commit_delay = commit_delay
        self.commit_max_entries = commit_max_entries
        self._listeners: list[Callable[[], None]] = []
        self._uncommitted: list[Entry] = []  # applied to the pending batch
        self._timer: asyncio.TimerHandle | None = None
        self._failed: BaseException | None = None
        self.stats: dict[str, int] = {
            "entries": 0,
            "skipped": 0,
            "invalid": 0,
            "commits": 0,
            "map_grown": 0,
            "snapshots_saved": 0,
            "snapshots_loaded": 0,
        }
        """Counters: entries handed to `on_apply`, skipped (at or below the
        applied index), invalid, LMDB commits, map growths, snapshots saved and
        loaded."""

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after each change of the store (see the class doc)."""
        self._listeners.append(fn)

    def last_applied_index(self) -> int:
        """The last log index whose effect is durably in the store."""
        return self.store.durable_index

    def on_apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply ``entries`` to the pending batch; one result per entry."""
        if self._failed is not None:
            raise RuntimeError(f"the KV store failed to commit earlier: {self._failed!r}")
        for attempt in range(_MAX_GROWTHS + 1):
            try:
                if attempt:
                    self._apply(self._uncommitted)  # results already given
                results, changed = self._apply(entries)
                break
            except lmdb.MapFullError:
                # Start again from the files, in a map twice as large.
                self.store.discard()
                if attempt == _MAX_GROWTHS or not self.store.grow_map():
                    raise
                self.stats["map_grown"] += 1
                log.warning("LMDB map full: grown to %d bytes", self.store.env.info()["map_size"])
        batch = self.store.pending
        if batch is not None:
            if not batch.changed:
                self.store.discard()  # nothing to commit (and nothing to lose)
            elif not self.commit_delay:
                self.flush()
            else:
                self._uncommitted.extend(entries)
                if len(self._uncommitted) >= self.commit_max_entries:
                    self.flush()
                elif self._timer is None:
                    loop = asyncio.get_running_loop()
                    self._timer = loop.call_later(self.commit_delay, self._flush_on_timer)
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
        changed = False
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
                before = (batch.revision, batch.compact_revision)
            batch.begin_command()
            append(_execute(batch, cmd))
        stats["entries"] += len(entries)
        if batch is not None:
            changed = (batch.revision, batch.compact_revision) != before
            batch.publish(max(applied, entries[-1].index))
        return results, changed

    def flush(self) -> None:
        """Commit what is applied and not yet committed (one fdatasync)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uncommitted.clear()
        if self.store.flush():
            self.stats["commits"] += 1

    def _flush_on_timer(self) -> None:
        self._timer = None
        try:
            self.flush()
        except Exception as e:
            # The files no longer match what was applied: stop applying (the
            # next on_apply raises, and the node stops) rather than diverge.
            log.exception("KV store commit failed; this replica stops applying")
            self._failed = e

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn()
            except Exception:
                log.exception("KV store listener failed")

    # -- snapshots ------------------------------------------------------------------

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        """Capture the store as of ``writer.index`` (commit, then a read
        transaction, on the loop) and return the copy into ``writer.directory``
        for a worker thread."""
        self.flush()
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uncommitted.clear()
        self.store.replace_from(reader.directory, reader.index)
        self.stats["snapshots_loaded"] += 1
        log.info(
            "KV store loaded from the snapshot at index %d (revision %d)",
            reader.index,
            self.store.revision,
        )
        self._notify()

    def on_shutdown(self) -> None:
        """The node is shutting down: commit what is pending."""
        self.flush()

    def close(self) -> None:
        """Commit what is pending and close the store (after the node and the
        service are done with it)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._uncommitted.clear()
        self.store.close()


__all__ = ["KvStateMachine", "SnapshotReader", "SnapshotWriter"]
