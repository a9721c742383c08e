"""`NodeSnapshots`: a node's snapshots -- taking them, compacting the log after
them, and installing them on followers that fell behind.

Theory of operation
-------------------
*Saving.* A snapshot is due after ``snapshot_every_entries`` applied entries,
every ``snapshot_interval_s`` (if anything was applied), or on demand
(`Node.snapshot`); never two at once. The node's `Ready` handler calls
`NodeSnapshots.save_steps` right after an apply, so the machine has applied
exactly the index the snapshot will hold. ``on_snapshot_save`` captures its
state there, on the loop (the only pause of the apply pipeline); the
callable it returns writes the files on a worker thread, which then commits
the `SnapshotStorage` session (checksums, fsync, rename), while later
entries keep applying. Back on the loop the core learns of the snapshot
(`RaftCore.set_snapshot`) and the log is compacted.

*Compaction.* Entries up to ``index - snapshot_log_margin`` are dropped
(`LogStorage.truncate_prefix`, whole segments), but none after a snapshot
being sent to a follower, which will need them once it has installed it
(else a follower whose install outlasts the next snapshot would need
another install, and another). The core reads the log
through `CompactedLogView`, whose first index moves on the loop before
storage drops anything, so the core never reaches for an entry being
removed. The log has one writer at a time: without a writer thread the
truncation runs on the loop between `Ready`s (as the node's own writes do);
with ``leader_write_thread`` it is queued on that thread, in order with the
writes, and a write the loop makes itself waits for it (`compacting`). A
`TransientStorageError` (no file descriptor left) is retried later; any
other storage error stops the node, as a failed log write does.

*Installing.* `SnapshotSender` (leader) and `SnapshotInstaller` (follower)
move the bytes; `install_steps` runs in the `Ready` that carries the
restored snapshot, before its messages and applies: publish the received
copy, reset the log to start just after it, load it into the machine.

The ``raft.snapshot`` service (`pyjraft.node.snapshot_wire`) is attached
to the node's transport for as long as the node runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Generator
from functools import partial
from typing import TYPE_CHECKING, Any

from pyjraft.core.log_reader import LogUnavailableError
from pyjraft.core.types import ConfState, Entry, SnapshotMeta
from pyjraft.node.errors import NodeStorageError, ShutdownError, StateMachineError
from pyjraft.node.ioprio import idle_io
from pyjraft.node.snapshot_install import Install, SnapshotInstaller
from pyjraft.node.snapshot_send import SnapshotSender
from pyjraft.node.snapshot_start import Recovered, reader_for
from pyjraft.node.snapshot_wire import (
    EndRequest,
    MetaRequest,
    Offer,
    ReadRequest,
    Request,
    SnapshotRequestError,
    SnapshotService,
)
from pyjraft.node.state_machine import SnapshotWriter, StateMachine
from pyjraft.node.writeback import pace_writeback
from pyjraft.storage.api import LogStorage, StorageError, TransientStorageError
from pyjraft.storage.snapshot import SnapshotStorage
from pyjraft.storage.snapshot_manifest import SnapshotManifest
from pyjraft.storage.snapshot_session import SnapshotInstallSession, SnapshotWriteSession

if TYPE_CHECKING:
    from pyjraft.node.node import Node

_TRANSIENT_RETRIES = 50
_TRANSIENT_BACKOFF_S = 0.1
_COMPACT_RETRY_S = 1.0


class SnapshotsUnavailableError(RuntimeError):
    """`Node.snapshot` on a node that cannot take snapshots (its state machine
    does not implement ``on_snapshot_save``, or it has no ``data_dir``)."""


class CompactedLogView:
    """The log as the core reads it: `LogStorage`, but starting no earlier than
    `first_kept`, which the loop raises before storage truncates (possibly on
    another thread). Reads go straight to storage."""

    __slots__ = ("entries", "first_kept", "last_index", "storage", "term")

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.first_kept = 0
        """Where the core's view of the log starts at the earliest."""
        self.last_index: Callable[[], int] = storage.last_index
        self.term: Callable[[int], int] = storage.term
        self.entries: Callable[..., list[Entry]] = storage.entries

    def first_index(self) -> int:
        """Storage's first index, or `first_kept` if storage is behind it."""
        first = self.storage.first_index()
        return first if first >= self.first_kept else self.first_kept


def _conf_at(core: Any, index: int) -> ConfState:
    """The configuration in force at ``index``: the core's ``conf_at`` once
    membership changes land in the core; until then the configuration never
    changes, and the current one is it."""
    conf_at = getattr(core, "conf_at", None)
    if conf_at is not None:
        return conf_at(index)  # type: ignore[no-any-return]
    return ConfState(core.voters, core.learners)


def can_snapshot(machine: StateMachine) -> bool:
    """Whether ``machine`` implements `StateMachine.on_snapshot_save`."""
    return type(machine).on_snapshot_save is not StateMachine.on_snapshot_save


def _retry_transient(fn: Callable[[], Any]) -> Any:
    """``fn()``, retried after `TransientStorageError` (blocking: worker threads)."""
    for attempt in range(_TRANSIENT_RETRIES):
        try:
            return fn()
        except TransientStorageError:
            if attempt == _TRANSIENT_RETRIES - 1:
                raise
            time.sleep(_TRANSIENT_BACKOFF_S)
    raise AssertionError("unreachable")


def _write_and_commit(
    session: SnapshotWriteSession,
    writer: SnapshotWriter,
    write: Callable[[], None] | None,
    rate: int,
) -> SnapshotManifest:
    """The worker thread's part of a save: the machine's writing, the files handed
    to the disk at ``rate`` (`pyjraft.node.writeback`), then publication; in the
    idle I/O class (`pyjraft.node.ioprio`): the log's writes go first."""
    with idle_io():
        if write is not None:
            write()
        pace_writeback(session.directory, rate)
        return _retry_transient(partial(session.commit, writer.user_meta))  # type: ignore[no-any-return]


def _finish_install(session: SnapshotInstallSession) -> SnapshotManifest:
    return _retry_transient(session.finish)  # type: ignore[no-any-return]


class NodeSnapshots:
    """Snapshots of one node (see the module docstring)."""

    def __init__(self, node: Node, storage: SnapshotStorage | None, recovered: Recovered) -> None:
        self._node = node
        self.storage = storage
        self._loop = node._loop
        o = node.options
        self.can_save = storage is not None and can_snapshot(node._fsm.machine)
        """Whether this node takes snapshots at all."""
        snap = recovered.snapshot
        self.index = snap.index if snap is not None else 0
        """Index of the newest snapshot (taken or installed)."""
        self.term = snap.term if snap is not None else 0
        self._every = o.snapshot_every_entries if self.can_save else 0
        self._interval = o.snapshot_interval_s if self.can_save else 0.0
        self._margin = o.snapshot_log_margin
        self._write_rate = o.snapshot_write_bytes_per_s
        self._retry_at = 0  # after a failed save: no count-triggered save before this
        self.requested = False
        """A snapshot was asked for (timer, `Node.snapshot`) and not yet started."""
        self._saving: asyncio.Task[None] | None = None
        self._waiters: list[asyncio.Future[SnapshotManifest]] = []
        self.compacting: asyncio.Future[None] | None = None
        """The log compaction running on the writer thread, if any."""
        self._installing = False  # while a Ready installs a snapshot, no compaction
        self._compact_timer: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.sender = (
            SnapshotSender(node, storage, self._compact, lambda: self.index - self._margin)
            if storage is not None
            else None
        )
        self.installer = SnapshotInstaller(node, storage) if storage is not None else None
        self.last_save: dict[str, Any] | None = None
        self.last_install: dict[str, Any] | None = None
        self.stats: dict[str, int | float] = {
            "saves": 0,
            "save_failures": 0,
            "save_seconds": 0.0,
            "save_pause_seconds": 0.0,
            "installs": 0,
            "install_seconds": 0.0,
            "compactions": 0,
            "compaction_retries": 0,
        }
        if snap is not None and snap.index < node._log.first_index() - 1:
            # A damaged newer snapshot was set aside: this one cannot be sent to
            # followers (the log does not follow it). Take a current one now.
            self.requested = self.can_save

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Serve snapshot transfers and arm the interval timer."""
        if self.storage is not None:
            SnapshotService.attach(self._node.transport, self._node.group, self._serve)
        self._arm_timer()

    async def close(self) -> None:
        """Stop: no more transfers, the save in flight finished or abandoned,
        waiters failed, snapshot storage closed."""
        node = self._node
        SnapshotService.detach(node.transport, node.group)
        for handle in (self._timer, self._compact_timer):
            if handle is not None:
                handle.cancel()
        if self.sender is not None:
            await self.sender.close()
        if self.installer is not None:
            await self.installer.close()
        if self._saving is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._saving), 30.0)
        self._fail_waiters(ShutdownError("node shut down before the snapshot was taken"))
        if self.storage is not None:
            self.storage.close()

    # -- saving ------------------------------------------------------------------

    @property
    def saving(self) -> bool:
        """Whether a snapshot is being written."""
        return self._saving is not None

    def wants_save(self) -> bool:
        """A snapshot was asked for while the node was idle: drive a `Ready`."""
        return self.requested and self._saving is None

    def due(self) -> bool:
        """Whether to take a snapshot now, between applies."""
        if not self.can_save or self._saving is not None:
            return False
        applied = self._node._fsm.applied_index
        if self.requested:
            if applied > self.index:
                return True
            self.requested = False
            self._answer_idle()
            return False
        return 0 < self._every <= applied - self.index and applied >= self._retry_at

    async def snapshot(self) -> SnapshotManifest:
        """Take a snapshot of what is applied now (see `Node.snapshot`)."""
        if not self.can_save:
            raise SnapshotsUnavailableError(
                "this node takes no snapshots: its state machine does not implement "
                "on_snapshot_save, or it has no data_dir"
            )
        fut: asyncio.Future[SnapshotManifest] = self._loop.create_future()
        self._waiters.append(fut)
        self.requested = True
        self._node._schedule_drive()
        return await fut

    def save_steps(self) -> Generator[Any, Any, None]:
        """Capture the machine's state (see the module docstring); yields what
        the node's `Ready` handler must wait for."""
        node = self._node
        core = node._core
        index = node._fsm.applied_index
        waiters, self._waiters = self._waiters, []
        self.requested = False
        try:
            term = core.log.term(index)
        except LogUnavailableError:
            # The core restored a newer snapshot meanwhile; it is being installed.
            self._requeue(waiters)
            return
        assert self.storage is not None
        conf = _conf_at(core, index)
        t0 = time.perf_counter()
        session: SnapshotWriteSession | None = None
        try:
            session = self.storage.begin(index, term, conf)
            self._dbg_begin = time.perf_counter() - t0
            writer = SnapshotWriter(index, term, conf, session.directory)
            result = node._fsm.machine.on_snapshot_save(writer)
            if inspect.isawaitable(result):
                result = yield result
            if result is not None and not callable(result):
                raise TypeError(
                    f"on_snapshot_save returned {type(result).__name__}, not a callable or None"
                )
        except Exception as exc:
            if session is not None:
                yield asyncio.to_thread(session.abort)  # rare: applies wait for it
            self._save_failed(index, exc, waiters)
            return
        pause = time.perf_counter() - t0
        self._saving = self._loop.create_task(
            self._write(session, writer, result, t0, pause, waiters)
        )

    async def _write(
        self,
        session: SnapshotWriteSession,
        writer: SnapshotWriter,
        write: Callable[[], None] | None,
        t0: float,
        pause: float,
        waiters: list[asyncio.Future[SnapshotManifest]],
    ) -> None:
        node = self._node
        try:
            manifest = await asyncio.to_thread(
                _write_and_commit, session, writer, write, self._write_rate
            )
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                await asyncio.to_thread(session.abort)
            self._saving = None
            self._save_failed(writer.index, exc, waiters)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._saving = None
        elapsed = time.perf_counter() - t0
        node._core.set_snapshot(manifest.core_meta)
        if manifest.index > self.index:
            self.index, self.term = manifest.index, manifest.term
        self.stats["saves"] += 1
        self.stats["save_seconds"] += elapsed
        self.stats["save_pause_seconds"] += pause
        self.last_save = {
            "index": manifest.index,
            "term": manifest.term,
            "bytes": manifest.total_size,
            "files": len(manifest.files),
            "pause_ms": round(pause * 1000, 3),
            "begin_ms": round(getattr(self, "_dbg_begin", 0) * 1000, 3),
            "duration_ms": round(elapsed * 1000, 3),
            "time": time.time(),
        }
        node.events.record(
            "snapshot_saved",
            f"snapshot saved at index {manifest.index}: {manifest.total_size} bytes in "
            f"{len(manifest.files)} files, {elapsed * 1000:.1f} ms (applies paused "
            f"{pause * 1000:.2f} ms)",
            counter="snapshots_saved",
            **{k: v for k, v in self.last_save.items() if k != "time"},
        )
        for fut in waiters:
            if not fut.done():
                fut.set_result(manifest)
        if node._running():
            self._compact()
            if self.requested or self.due():
                node._schedule_drive()

    def _save_failed(
        self, index: int, exc: BaseException, waiters: list[asyncio.Future[SnapshotManifest]]
    ) -> None:
        self.stats["save_failures"] += 1
        self._node.events.record(
            "snapshot_save_failed",
            f"snapshot at index {index} failed: {exc!r}",
            level=logging.ERROR,
            counter="snapshot_save_failures",
            index=index,
            error=repr(exc),
        )
        err = exc if isinstance(exc, Exception) else ShutdownError("snapshot cancelled")
        for fut in waiters:
            if not fut.done():
                fut.set_exception(err)
        # Retry after half the count again, not at every apply from now on.
        self._retry_at = index + max(1, self._every // 2)

    def _requeue(self, waiters: list[asyncio.Future[SnapshotManifest]]) -> None:
        self._waiters[:0] = waiters
        self.requested = bool(self._waiters)

    def _answer_idle(self) -> None:
        """A snapshot was asked for but nothing was applied since the last one."""
        waiters, self._waiters = self._waiters, []
        if not waiters:
            return
        latest = self.storage.latest() if self.storage is not None else None
        for fut in waiters:
            if fut.done():
                continue
            if latest is None:
                fut.set_exception(SnapshotsUnavailableError("nothing applied to snapshot yet"))
            else:
                fut.set_result(latest)

    def _fail_waiters(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_exception(exc)

    def _arm_timer(self) -> None:
        if self._interval > 0:
            self._timer = self._loop.call_later(self._interval, self._on_timer)

    def _on_timer(self) -> None:
        node = self._node
        if not node._running():
            return
        if node._fsm.applied_index > self.index:
            self.requested = True
            node._schedule_drive()
        self._arm_timer()

    # -- compaction ----------------------------------------------------------------

    def _compact(self) -> None:
        """Drop the log up to the newest snapshot minus the margin."""
        node = self._node
        if self.compacting is not None or self._installing or not node._running():
            return
        log = node._log
        keep = self.index - self._margin
        sending = self.sender.oldest_index() if self.sender is not None else None
        if sending is not None:
            # A follower receiving that snapshot will need the log after it.
            keep = min(keep, sending)
        first_kept = min(keep, log.last_index()) + 1
        if first_kept <= log.first_index():
            return
        view = node._log_view
        view.first_kept = max(view.first_kept, first_kept)
        writer = node._writer
        if writer is None:
            try:
                log.truncate_prefix(first_kept)
            except Exception as exc:
                self._compacted(first_kept, exc)
                return
            self._compacted(first_kept, None)
            return
        fut = writer.submit_call(partial(log.truncate_prefix, first_kept))
        self.compacting = fut
        fut.add_done_callback(partial(self._compaction_done, first_kept))

    def _compaction_done(self, first_kept: int, fut: asyncio.Future[None]) -> None:
        self.compacting = None
        self._compacted(first_kept, fut.exception())

    def _compacted(self, first_kept: int, exc: BaseException | None) -> None:
        node = self._node
        if exc is None:
            self.stats["compactions"] += 1
            node.events.log.debug("log compacted: it now starts at index %d", first_kept)
            return
        if isinstance(exc, TransientStorageError):
            self.stats["compaction_retries"] += 1
            node.events.log.warning(
                "log compaction up to index %d must wait: %s; retrying in %g s",
                first_kept,
                exc,
                _COMPACT_RETRY_S,
            )
            if self._compact_timer is None:
                self._compact_timer = self._loop.call_later(_COMPACT_RETRY_S, self._retry_compact)
            return
        node._fatal(NodeStorageError(f"log compaction failed: {exc!r}"))

    def _retry_compact(self) -> None:
        self._compact_timer = None
        self._compact()

    # -- installing ----------------------------------------------------------------

    def send(self, requests: list[tuple[str, SnapshotMeta]]) -> None:
        """A leader's core asks for snapshots to be sent (``Ready.snapshots_to_send``)."""
        if self.sender is not None:
            self.sender.send(requests)
        else:
            self._node.events.log.error(
                "asked to send a snapshot to %s, but this node has no snapshot storage",
                ", ".join(p for p, _ in requests),
            )

    def install_steps(self, meta: SnapshotMeta) -> Generator[Any, Any, None]:
        """Install the snapshot ``Ready.snapshot`` names: publish it, reset the log
        after it, load it into the machine; yields what the `Ready` handler must
        wait for. Raises `NodeStorageError` or `StateMachineError` (fatal)."""
        assert self.installer is not None and self.storage is not None
        inst = self.installer.take(meta)
        assert inst.session is not None
        self._installing = True
        try:
            yield from self._install(inst, meta)
        finally:
            self._installing = False
        self._compact()

    def _install(self, inst: Install, meta: SnapshotMeta) -> Generator[Any, Any, None]:
        node = self._node
        assert inst.session is not None and self.storage is not None
        try:
            manifest = yield asyncio.to_thread(_finish_install, inst.session)
            for attempt in range(_TRANSIENT_RETRIES):
                try:
                    node._log.reset(meta.index + 1, meta.term)
                    break
                except TransientStorageError:
                    if attempt == _TRANSIENT_RETRIES - 1:
                        raise
                    yield asyncio.sleep(_TRANSIENT_BACKOFF_S)
            node._log_view.first_kept = 0
            reader = self.storage.open(manifest)
        except (StorageError, OSError, ValueError) as exc:
            msg = f"installing the snapshot at {meta.index} failed: {exc!r}"
            raise NodeStorageError(msg) from exc
        try:
            try:
                result = node._fsm.machine.on_snapshot_load(reader_for(manifest, reader.directory))
                if inspect.isawaitable(result):
                    yield result
            except Exception as exc:
                raise StateMachineError(
                    f"on_snapshot_load raised on the snapshot at index {meta.index}: {exc!r}"
                ) from exc
        finally:
            self._loop.create_task(asyncio.to_thread(reader.close))
        node._fsm.applied_index = meta.index
        if meta.index > self.index:
            self.index, self.term = meta.index, meta.term
        p = inst.progress(self._loop.time())
        self.stats["installs"] += 1
        self.stats["install_seconds"] += p["elapsed_s"]
        self.last_install = {**p, "time": time.time()}
        node.events.record(
            "snapshot_installed",
            f"installed the snapshot at index {meta.index} from {inst.leader}: "
            f"{p['bytes_done']} bytes in {p['elapsed_s']} s "
            f"({p['rate_bytes_s'] / (1 << 20):.1f} MiB/s)",
            counter="snapshot_installs",
            **p,
        )

    # -- the service, status -----------------------------------------------------

    async def _serve(self, req: Request) -> Any:
        if not self._node._running():
            raise SnapshotRequestError("the node is not running")
        if isinstance(req, Offer):
            assert self.installer is not None
            return await self.installer.serve_offer(req)
        assert self.sender is not None
        if isinstance(req, MetaRequest):
            return await self.sender.serve_meta(req)
        if isinstance(req, ReadRequest):
            return await self.sender.serve_read(req)
        if isinstance(req, EndRequest):
            return await self.sender.serve_end(req)
        raise SnapshotRequestError("unknown request")

    def status(self) -> dict[str, Any]:
        """The newest snapshot, the save in flight, transfers in progress, totals."""
        return {
            "enabled": self.can_save,
            "index": self.index,
            "term": self.term,
            "saving": self._saving is not None,
            "last_save": self.last_save,
            "installing": None if self.installer is None else self.installer.status(),
            "last_install": self.last_install,
            "sending": {} if self.sender is None else self.sender.status(),
            "bytes_sent": 0 if self.sender is None else self.sender.bytes_sent,
            "bytes_received": 0 if self.installer is None else self.installer.bytes_received,
            **self.stats,
        }
