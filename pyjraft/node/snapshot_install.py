"""`SnapshotInstaller`: a follower's side of snapshot installation.

Theory of operation
-------------------
The leader offers a transfer (`pyjraft.node.snapshot_wire`); the follower
accepts it only while it follows that leader in that term, and only one at
a time (an offer of an older term's leader gives way; another offer of the
same leader is refused as busy: that leader gave up on the running one,
which then fails at its next request). It then fetches, from the leader it
dialled (authenticated by its certificate under TLS):

1. the metadata, decoded and checked as hostile (`decode_snapshot_manifest`),
   and opens an install session (`SnapshotStorage.begin_install`), which
   writes into a temporary directory;
2. the chunks of every file, in order, ``snapshot_window`` requests in
   flight; each chunk must have exactly the size asked for, is checksummed
   here and written by a worker thread (the session checks its place in the
   file); memory holds at most the window.

Before every chunk and at the end it checks that it still follows the same
leader in the same term; any failure or change abandons the session (its
directory is removed), tells the leader, and logs why. Once every file has
its size and CRC32C from the metadata, the follower offers the snapshot to
its core (`RaftCore.restore` with the leader and term the transfer came
from). If the core takes it, the session waits (`restored`) for the next
`Ready`, whose handling publishes it, resets the log and loads the state
machine before anything else (`NodeSnapshots.install_steps`); if not (the
follower caught up meanwhile), the session is abandoned. Either way the
leader hears the outcome. A follower that dies mid-transfer leaves only a
temporary directory, which the next start removes: it never loads a
partial copy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Coroutine, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

import crc32c

from pyjraft.core.types import NodeId, Role, SnapshotMeta
from pyjraft.node.snapshot_wire import (
    SERVICE,
    Offer,
    end_request,
    meta_request,
    read_request,
)
from pyjraft.node.writeback import RANGE_BYTES, start_writeback
from pyjraft.storage.api import InvalidSnapshotError
from pyjraft.storage.snapshot import SnapshotStorage
from pyjraft.storage.snapshot_manifest import SnapshotManifest, decode_snapshot_manifest
from pyjraft.storage.snapshot_session import SnapshotInstallSession

if TYPE_CHECKING:
    from pyjraft.node.node import Node


class TransferAbandoned(Exception):
    """The transfer no longer belongs to this follower's current leader and term."""


class Install:
    """One transfer being received (or received and waiting for its `Ready`)."""

    __slots__ = (
        "bytes_done",
        "index",
        "last_active",
        "leader",
        "manifest",
        "session",
        "size",
        "started",
        "task",
        "term",
        "transfer",
    )

    def __init__(self, offer: Offer, now: float) -> None:
        self.leader: NodeId = offer.leader
        self.term = offer.term
        self.transfer = offer.transfer
        self.index = offer.index
        self.size = offer.size
        self.started = now
        self.last_active = now
        self.bytes_done = 0
        self.manifest: SnapshotManifest | None = None
        self.session: SnapshotInstallSession | None = None
        self.task: asyncio.Task[None] | None = None

    def progress(self, now: float) -> dict[str, Any]:
        """Who sends what, bytes received of how many, and the rate so far."""
        elapsed = max(now - self.started, 1e-9)
        total = self.manifest.total_size if self.manifest is not None else self.size
        return {
            "leader": self.leader,
            "leader_term": self.term,
            "index": self.index,
            "bytes_done": self.bytes_done,
            "bytes_total": total,
            "rate_bytes_s": round(self.bytes_done / elapsed),
            "elapsed_s": round(elapsed, 3),
        }


def _chunks(manifest: SnapshotManifest, chunk: int) -> Iterator[tuple[str, int, int]]:
    for f in manifest.files:
        for offset in range(0, f.size, chunk):
            yield f.name, offset, min(chunk, f.size - offset)


class SnapshotInstaller:
    """Receives the leader's snapshot for a follower (see the module docstring)."""

    def __init__(self, node: Node, storage: SnapshotStorage) -> None:
        self._node = node
        self._storage = storage
        self._loop = node._loop
        o = node.options
        self._timeout = o.snapshot_transfer_timeout_ms / 1000
        self._chunk = o.snapshot_chunk_bytes
        self._window = o.snapshot_window
        self.active: Install | None = None
        """The transfer being received."""
        self.restored: Install | None = None
        """A received snapshot the core restored, waiting for its `Ready`."""
        self.bytes_received = 0
        """Snapshot bytes received, over all transfers."""
        self._closed = False
        self._receiving: set[asyncio.Task[None]] = set()
        self._telling: set[asyncio.Task[None]] = set()

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._node.events.log

    # -- what the leader asks ---------------------------------------------------

    async def serve_offer(self, offer: Offer) -> dict[str, Any]:
        """Accept the transfer ``offer`` or say why not."""
        node = self._node
        core = node._core
        if self._closed or not node._running():
            return _refused("the node is not running")
        if core.role is Role.LEADER or core.leader != offer.leader or core.term != offer.term:
            return _refused(
                f"not following {offer.leader} in term {offer.term} (following "
                f"{core.leader or 'nobody'} in term {core.term})"
            )
        if self.restored is not None:
            return _refused("busy installing a snapshot")
        running = self.active
        if running is not None:
            if running.transfer == offer.transfer:
                return {"accepted": True, "reason": ""}
            if (running.leader, running.term) == (offer.leader, offer.term):
                return _refused("busy receiving another transfer of this leader")
            self._cancel(running, f"superseded by {offer.leader}'s offer in term {offer.term}")
        inst = Install(offer, self._loop.time())
        self.active = inst
        node.events.record(
            "snapshot_install_started",
            f"installing the snapshot at index {offer.index} ({offer.size} bytes) "
            f"from {offer.leader}",
            counter="snapshot_installs_started",
            leader=offer.leader,
            index=offer.index,
            bytes_total=offer.size,
        )
        inst.task = self._spawn(self._receive(inst), self._receiving)
        return {"accepted": True, "reason": ""}

    def take(self, meta: SnapshotMeta) -> Install:
        """The restored install that ``Ready.snapshot`` (``meta``) asks to install."""
        inst = self.restored
        if inst is None or inst.manifest is None or inst.manifest.core_meta != meta:
            raise RuntimeError(f"asked to install {meta}, but what was restored is {inst}")
        self.restored = None
        return inst

    def status(self) -> dict[str, Any] | None:
        """The transfer being received or waiting to be installed, if any."""
        inst = self.active or self.restored
        return None if inst is None else inst.progress(self._loop.time())

    async def close(self) -> None:
        """Abandon whatever is being received (its files are removed)."""
        self._closed = True
        if self.active is not None:
            self._cancel(self.active, "node shutting down")
        for task in self._telling:
            task.cancel()  # best effort only; never hold up a shutdown
        # Including transfers failing on their own right now: their cleanup.
        await asyncio.gather(*self._receiving, *self._telling, return_exceptions=True)
        if self.restored is not None:
            inst, self.restored = self.restored, None
            if inst.session is not None:
                await asyncio.to_thread(inst.session.abort)

    # -- receiving ----------------------------------------------------------------

    def _cancel(self, inst: Install, reason: str) -> None:
        if self.active is inst:
            self.active = None
        if inst.task is not None and not inst.task.done():
            inst.task.cancel(reason)

    def _check(self, inst: Install) -> None:
        core = self._node._core
        if self.active is not inst or self._closed or not self._node._running():
            raise TransferAbandoned("abandoned")
        if core.role is Role.LEADER or core.term != inst.term or core.leader != inst.leader:
            raise TransferAbandoned(
                f"the leader changed: {core.leader or 'nobody'} leads in term {core.term}, "
                f"the transfer is {inst.leader}'s of term {inst.term}"
            )

    async def _receive(self, inst: Install) -> None:
        call = partial(self._node.transport.call, inst.leader, SERVICE, timeout=self._timeout)
        group = self._node.group
        inflight: collections.deque[tuple[str, int, int, asyncio.Task[Any]]] = collections.deque()
        try:
            raw = await call(meta_request(group, inst.transfer))
            if type(raw) is not bytes:
                raise InvalidSnapshotError("the leader's metadata is not bytes")
            manifest = decode_snapshot_manifest(raw)
            self._check(inst)
            inst.manifest = manifest
            inst.index = manifest.index
            inst.session = session = await asyncio.to_thread(self._storage.begin_install, manifest)
            self._check(inst)
            crcs = {f.name: 0 for f in manifest.files}
            plan = _chunks(manifest, self._chunk)

            def refill() -> None:
                while len(inflight) < self._window:
                    nxt = next(plan, None)
                    if nxt is None:
                        return
                    req = read_request(group, inst.transfer, *nxt)
                    inflight.append((*nxt, self._loop.create_task(call(req))))

            refill()
            while inflight:
                name, offset, size, task = inflight[0]
                data = await task
                inflight.popleft()
                refill()
                if type(data) is not bytes or len(data) != size:
                    got = len(data) if isinstance(data, bytes) else type(data).__name__
                    raise InvalidSnapshotError(
                        f"chunk of {name!r} at {offset}: asked {size} bytes, got {got}"
                    )
                self._check(inst)
                crcs[name] = crc32c.crc32c(data, crcs[name])
                await asyncio.to_thread(self._write, session, name, offset, data)
                inst.bytes_done += size
                self.bytes_received += size
                inst.last_active = self._loop.time()
            for f in manifest.files:
                if crcs[f.name] != f.crc32c:
                    raise InvalidSnapshotError(
                        f"file {f.name!r}: the data received does not match the CRC32C "
                        "in the leader's metadata"
                    )
            self._check(inst)
        except BaseException as exc:
            for *_, task in inflight:
                task.cancel()
            await self._failed(inst, exc)
            if isinstance(exc, asyncio.CancelledError) and self.active is inst:
                raise  # cancelled from outside, not by _cancel
            return
        await self._received(inst, manifest)

    def _write(self, session: SnapshotInstallSession, name: str, offset: int, data: bytes) -> None:
        """Write a chunk (worker thread). Every `_WRITEBACK_BYTES` of a file, its
        pages written so far are handed to the disk (asynchronously), so the
        fsync at the file's end does not flush the whole file at once: the
        disk works while the next chunks arrive."""
        session.write_chunk(name, offset, data)
        end = offset + len(data)
        if end // _WRITEBACK_BYTES != offset // _WRITEBACK_BYTES:
            _start_writeback(os.path.join(session.directory, name), end)

    async def _received(self, inst: Install, manifest: SnapshotManifest) -> None:
        """Every byte arrived and checks out: offer it to the core."""
        node = self._node
        self.active = None
        restored = node._core.restore(inst.leader, inst.term, manifest.core_meta)
        node._kick()  # the core answers the leader either way
        if restored:
            self.restored = inst
            self._spawn(self._tell_leader(inst, True, "restored"), self._telling)
            return
        assert inst.session is not None
        await asyncio.to_thread(inst.session.abort)
        node.events.record(
            "snapshot_install_skipped",
            f"not installing the snapshot at index {manifest.index} from {inst.leader}: "
            "this follower caught up meanwhile",
            leader=inst.leader,
            index=manifest.index,
        )
        self._spawn(self._tell_leader(inst, True, "caught up meanwhile"), self._telling)

    async def _failed(self, inst: Install, exc: BaseException) -> None:
        if self.active is inst:
            self.active = None
        if inst.session is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(inst.session.abort)
        if isinstance(exc, asyncio.CancelledError):
            reason = str(exc.args[0]) if exc.args else "cancelled"
        else:
            reason = str(exc) if isinstance(exc, TransferAbandoned) else repr(exc)
        p = inst.progress(self._loop.time())
        self._node.events.record(
            "snapshot_install_failed",
            f"installing the snapshot at index {p['index']} from {inst.leader} failed after "
            f"{p['bytes_done']} of {p['bytes_total']} bytes: {reason}",
            level=logging.WARNING,
            counter="snapshot_install_failures",
            reason=reason,
            **p,
        )
        if not self._closed:
            self._spawn(self._tell_leader(inst, False, reason), self._telling)

    def _spawn(
        self, coro: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    async def _tell_leader(self, inst: Install, ok: bool, reason: str) -> None:
        # Best effort: a leader that does not hear it times the transfer out.
        req = end_request(self._node.group, inst.transfer, ok, reason)
        with contextlib.suppress(Exception):
            await self._node.transport.call(inst.leader, SERVICE, req, timeout=self._timeout)


_WRITEBACK_BYTES = RANGE_BYTES


def _start_writeback(path: str, end: int) -> None:
    """Start writing ``path``'s last stretch up to ``end`` to disk; do not wait."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            start = max(0, end - 2 * _WRITEBACK_BYTES)  # this stretch and the last
            start_writeback(fd, start, end - start)
        finally:
            os.close(fd)


def _refused(reason: str) -> dict[str, Any]:
    return {"accepted": False, "reason": reason}
