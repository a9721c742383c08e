"""`SnapshotSender`: a leader's side of snapshot installation.

Theory of operation
-------------------
When the core asks for a snapshot to be sent (``Ready.snapshots_to_send``),
the leader opens its newest snapshot (`SnapshotStorage.open_latest`, which
pins it: pruning skips it until the transfer ends), gives the transfer a
random id and offers it to the follower (`pyjraft.node.snapshot_wire`). The
follower then fetches the metadata and the chunks; this side only answers,
reading each chunk from disk on a worker thread, one at a time per
transfer, after the shared `Throttle` allows its bytes. Nothing but the
chunks being answered is ever in memory.

The log after a snapshot being sent is not compacted (`oldest_index`): the
follower will need it once it has installed the snapshot. Nor is it after a
successful transfer, until that follower has caught up to within the
compaction margin, stops making progress for ``snapshot_transfer_timeout_ms``,
or this node stops leading; otherwise a follower whose install outlasted
the next snapshot would need another install, and another.

A transfer ends when the follower says so (``end``), when the offer fails,
when it makes no progress for ``snapshot_transfer_timeout_ms``, when this
node stops leading the term it started in, or when the core asks again for
the same follower. Then the reader is closed (under the transfer's lock, so
never under a read in flight) and the core is told
(`RaftCore.report_snapshot`): at once after a success, after a short
back-off after a failure (the core then probes the follower again and, if
it still lags behind the log, asks for a new transfer of the newest
snapshot). One transfer per follower at a time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from pyjraft.core.types import NodeId, Role, SnapshotMeta
from pyjraft.node.snapshot_wire import (
    SERVICE,
    EndRequest,
    MetaRequest,
    Offer,
    ReadRequest,
    SnapshotRequestError,
    offer_request,
)
from pyjraft.node.throttle import Throttle
from pyjraft.storage.snapshot import SnapshotReader, SnapshotStorage
from pyjraft.storage.snapshot_manifest import encode_snapshot_manifest

if TYPE_CHECKING:
    from pyjraft.node.node import Node

_FAILURE_BACKOFF_S = 0.5


class _Transfer:
    """One snapshot on its way to one follower."""

    __slots__ = (
        "bytes_sent",
        "ended",
        "id",
        "last_active",
        "lock",
        "peer",
        "reader",
        "started",
        "term",
    )

    def __init__(self, peer: NodeId, term: int, reader: SnapshotReader, now: float) -> None:
        self.peer = peer
        self.term = term
        self.reader = reader
        self.id = secrets.token_bytes(16)
        self.started = now
        self.last_active = now
        self.bytes_sent = 0
        self.ended = False
        self.lock = asyncio.Lock()

    def progress(self, now: float) -> dict[str, Any]:
        """Bytes sent, of how many, and the rate so far."""
        elapsed = max(now - self.started, 1e-9)
        return {
            "index": self.reader.index,
            "bytes_done": self.bytes_sent,
            "bytes_total": self.reader.meta.total_size,
            "rate_bytes_s": round(self.bytes_sent / elapsed),
            "elapsed_s": round(elapsed, 3),
        }


class SnapshotSender:
    """Streams a leader's newest snapshot to the followers its core asks for."""

    def __init__(
        self,
        node: Node,
        storage: SnapshotStorage,
        ended: Callable[[], None],
        caught_up_at: Callable[[], int],
    ) -> None:
        """``ended()`` is called when the log may be compacted further (a transfer
        ended, a follower caught up); a follower has caught up after a transfer
        once it matches ``caught_up_at()`` (the compaction point)."""
        self._node = node
        self._storage = storage
        self._ended = ended
        self._caught_up_at = caught_up_at
        # After a successful transfer: peer -> [snapshot index, match, when it last grew].
        self._catching_up: dict[NodeId, list[Any]] = {}
        self._loop = node._loop
        self._timeout = node.options.snapshot_transfer_timeout_ms / 1000
        self.throttle = Throttle(node.options.snapshot_throttle_bytes)
        self._transfers: dict[NodeId, _Transfer] = {}
        self._by_id: dict[bytes, _Transfer] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.bytes_sent = 0
        """Snapshot bytes served to followers, over all transfers."""

    @property
    def _log(self) -> logging.LoggerAdapter[logging.Logger]:
        return self._node.events.log

    # -- what the node asks --------------------------------------------------

    def send(self, requests: list[tuple[NodeId, SnapshotMeta]]) -> None:
        """Start a transfer to each follower named (``Ready.snapshots_to_send``)."""
        term = self._node._core.term
        for peer, _ in requests:
            old = self._transfers.get(peer)
            if old is not None:
                # The core asks again only once it considers the old one over.
                self._end(old, False, "superseded by a new request", report=False)
            self._spawn(self._start(peer, term))

    def oldest_index(self) -> int | None:
        """Index of the oldest snapshot being sent, or sent to a follower still
        catching up after it; None if there is none."""
        sending = [t.reader.index for t in self._transfers.values()]
        return min((*sending, *(c[0] for c in self._catching_up.values())), default=None)

    def status(self) -> dict[str, Any]:
        """Each transfer in progress, by follower."""
        now = self._loop.time()
        return {peer: t.progress(now) for peer, t in self._transfers.items()}

    async def close(self) -> None:
        """End every transfer (nothing reported) and wait for their readers to close."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for t in list(self._transfers.values()):
            self._end(t, False, "node shutting down", report=False)
        tasks = list(self._tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what the follower asks ----------------------------------------------

    async def serve_meta(self, req: MetaRequest) -> bytes:
        """The encoded metadata of the transfer's snapshot."""
        t = self._transfer(req.transfer)
        t.last_active = self._loop.time()
        return encode_snapshot_manifest(t.reader.meta)

    async def serve_read(self, req: ReadRequest) -> bytes:
        """One chunk of one file of the transfer's snapshot."""
        t = self._transfer(req.transfer)
        await self.throttle.acquire(req.size)
        async with t.lock:
            if t.ended:
                raise SnapshotRequestError("the transfer ended")
            data = await asyncio.to_thread(t.reader.read_chunk, req.file, req.offset, req.size)
        t.bytes_sent += len(data)
        self.bytes_sent += len(data)
        t.last_active = self._loop.time()
        return data

    async def serve_end(self, req: EndRequest) -> None:
        """The follower is done with the transfer (installed it, or gave up)."""
        t = self._by_id.get(req.transfer)
        if t is not None:
            self._end(t, req.ok, req.reason or ("installed" if req.ok else "failed"))

    # -- internals -------------------------------------------------------------

    def _transfer(self, transfer: bytes) -> _Transfer:
        t = self._by_id.get(transfer)
        if t is None:
            raise SnapshotRequestError("no such transfer (it ended, or never was)")
        core = self._node._core
        if core.role is not Role.LEADER or core.term != t.term:
            self._end(t, False, f"no longer leader of term {t.term}")
            raise SnapshotRequestError(f"no longer leader of term {t.term}")
        return t

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, peer: NodeId, term: int) -> None:
        node = self._node
        try:
            reader = await asyncio.to_thread(self._storage.open_latest)
        except Exception as exc:
            self._failed_to_start(peer, term, f"cannot open the newest snapshot: {exc!r}")
            return
        if reader is None:
            self._failed_to_start(peer, term, "no snapshot to send")
            return
        core = node._core
        if self._closed or core.role is not Role.LEADER or core.term != term:
            await asyncio.to_thread(reader.close)
            return
        t = _Transfer(peer, term, reader, self._loop.time())
        self._transfers[peer] = t
        self._by_id[t.id] = t
        total = reader.meta.total_size
        node.events.record(
            "snapshot_send_started",
            f"sending the snapshot at index {reader.index} ({total} bytes) to {peer}",
            counter="snapshot_sends_started",
            peer=peer,
            index=reader.index,
            bytes_total=total,
        )
        self._arm_sweeper()
        offer = Offer(node.group, node.id, term, t.id, reader.index, total)
        try:
            reply = await node.transport.call(
                peer, SERVICE, offer_request(offer), timeout=self._timeout
            )
        except Exception as exc:
            self._end(t, False, f"offer failed: {exc!r}")
            return
        if not isinstance(reply, dict) or reply.get("accepted") is not True:
            reason = reply.get("reason") if isinstance(reply, dict) else None
            self._end(t, False, f"offer refused: {str(reason)[:200]}")

    def _failed_to_start(self, peer: NodeId, term: int, reason: str) -> None:
        self._node.events.record(
            "snapshot_send_failed",
            f"cannot send a snapshot to {peer}: {reason}",
            level=logging.ERROR,
            counter="snapshot_send_failures",
            peer=peer,
            reason=reason,
        )
        self._loop.call_later(_FAILURE_BACKOFF_S, self._report, peer, term, False)

    def _end(self, t: _Transfer, ok: bool, reason: str, *, report: bool = True) -> None:
        if t.ended:
            return
        t.ended = True
        if self._transfers.get(t.peer) is t:
            del self._transfers[t.peer]
        self._by_id.pop(t.id, None)
        self._spawn(self._close_reader(t))
        p = t.progress(self._loop.time())
        if ok:
            self._node.events.record(
                "snapshot_sent",
                f"sent the snapshot at index {p['index']} to {t.peer}: {p['bytes_done']} bytes "
                f"in {p['elapsed_s']} s ({p['rate_bytes_s'] / (1 << 20):.1f} MiB/s)",
                counter="snapshot_sends",
                peer=t.peer,
                **p,
            )
        else:
            self._node.events.record(
                "snapshot_send_failed",
                f"sending the snapshot at index {p['index']} to {t.peer} failed after "
                f"{p['bytes_done']} of {p['bytes_total']} bytes: {reason}",
                level=logging.WARNING,
                counter="snapshot_send_failures",
                peer=t.peer,
                reason=reason,
                **p,
            )
        if self._closed:
            return
        if ok:
            self._catching_up[t.peer] = [p["index"], -1, self._loop.time()]
        self._ended()
        if not report:
            return
        if ok:
            self._report(t.peer, t.term, True)
        else:
            self._loop.call_later(_FAILURE_BACKOFF_S, self._report, t.peer, t.term, False)

    async def _close_reader(self, t: _Transfer) -> None:
        async with t.lock:  # never under a read in flight
            await asyncio.to_thread(t.reader.close)

    def _report(self, peer: NodeId, term: int, ok: bool) -> None:
        node = self._node
        core = node._core
        if self._closed or peer in self._transfers:
            return  # a newer transfer to it is under way
        if core.role is not Role.LEADER or core.term != term:
            return
        core.report_snapshot(peer, ok)
        node._kick()

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and (self._transfers or self._catching_up) and not self._closed:
            self._sweeper = self._loop.call_later(min(1.0, self._timeout / 4), self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        core = self._node._core
        now = self._loop.time()
        for t in list(self._transfers.values()):
            if core.role is not Role.LEADER or core.term != t.term:
                self._end(t, False, f"no longer leader of term {t.term}")
            elif now - t.last_active > self._timeout:
                self._end(t, False, f"no progress for {self._timeout:g} s")
        if self._catching_up and self._caught_up():
            self._ended()
        self._arm_sweeper()

    def _caught_up(self) -> bool:
        """Forget followers that caught up after their transfer (or stopped
        trying); whether any was forgotten."""
        core = self._node._core
        now = self._loop.time()
        target = self._caught_up_at()
        done = []
        for peer, c in self._catching_up.items():
            pr = core.progress.get(peer) if core.role is Role.LEADER else None
            if pr is None or pr.match >= target:
                done.append(peer)
            elif pr.match > c[1]:
                c[1], c[2] = pr.match, now
            elif now - c[2] > self._timeout:
                done.append(peer)
        for peer in done:
            del self._catching_up[peer]
        return bool(done)
