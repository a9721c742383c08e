"""`Node`: the asyncio runtime of one raft group member.

Theory of operation
-------------------
The pure core (`pyjraft.core.RaftCore`) is fed from three sources, all on
the event loop: a timer (one `tick` per heartbeat interval), the transport
(`step` for each inbound message) and callers of `apply`. Proposals queue up
and are proposed together at the next turn of the loop, so a burst becomes
one `propose_batch`: one log write, one fsync, one AppendEntries per follower.

Each `Ready` is handled by `_handle`, a generator driven from loop callbacks
(`_drive`), not by a task: the common path (a follower's append, a leader's
commit) runs start to end in the loop turn that produced it, with no task
wake-up in between. It does what the `Ready` contract says: the leader's
eager messages go out at once; hard state and entries are written, one
write and one fdatasync, on the loop's thread (a follower has nothing to do
before its write is durable but buffer what arrives next, which the next
`Ready` then writes as one batch; a leader's eager appends are already on
their way, so the followers' writes overlap its own); the
remaining messages are sent; committed entries are applied through the
`FSMCaller`; then `advance`. With ``NodeOptions.leader_write_thread`` a
leader hands its entries to a `LogWriter` thread instead and does not wait:
the `Ready` goes on (what it commits was made durable by a majority before),
its remaining messages and its `advance` wait for the write (`_written`, in
submission order), and the next `Ready`s are written by the thread's next
round, several per fdatasync. A node that is no longer leader lets those
writes finish before it writes anything itself. Where a step must wait (a
state machine callback that returns an awaitable, a former leader's writes),
the generator yields the awaitable and is resumed when it is done. One
`Ready` is handled at a time, one per loop turn (a long catch-up must not
starve timers and messages). What arrives during an inline fdatasync waits in
the socket buffers and goes into the next `Ready`: group commit. Snapshots
(`pyjraft.node.snapshots`) ride the same pipeline: a restored snapshot is
installed first in its `Ready`, a snapshot is captured right after an apply.

A caller's future (or `submit` callback) resolves when its entry is applied
on this node (hence durable on a majority, hence committed). If leadership
is lost first, it fails with `LeadershipLostError` (outcome unknown). Load is shed at
the door: `apply` raises `OverloadedError` when too much is pending, and the
node stays healthy. Storage failures and state machine exceptions are
fatal: the node stops participating rather than risk divergence.

Parts of `Node` live in mixins of their own: the timer that turns wall time
into ticks (`pyjraft.node.node_clock`), failure handling and the lifecycle
states (`pyjraft.node.lifecycle`), the read-only properties
(`pyjraft.node.node_info`) and the membership methods
(`pyjraft.node.membership`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import operator
import random
from collections.abc import Awaitable, Generator, Iterable
from functools import partial
from itertools import repeat
from time import perf_counter as _clock
from typing import Any

from pyjraft.core import conf as conf_codec
from pyjraft.core.config import CoreConfig
from pyjraft.core.errors import NotLeaderError, ProposalDroppedError
from pyjraft.core.messages import Heartbeat, Message
from pyjraft.core.raft import RaftCore
from pyjraft.core.ready import Ready
from pyjraft.core.types import NONE, Entry, EntryType, HardState, Role, SoftState
from pyjraft.node import busy_poll
from pyjraft.node.admin import AdminService
from pyjraft.node.describe import describe_node, status_of
from pyjraft.node.errors import (
    LeadershipLostError,
    NodeStorageError,
    OverloadedError,
    ShutdownError,
)
from pyjraft.node.events import NodeEvents
from pyjraft.node.fsm_caller import FSMCaller
from pyjraft.node.heartbeat_gaps import HeartbeatGaps
from pyjraft.node.lifecycle import Done, NodeFailure, NodeState, fail_queue
from pyjraft.node.membership import MembershipManager, MembershipMethods
from pyjraft.node.metrics import NodeMetrics
from pyjraft.node.node_clock import NodeClock
from pyjraft.node.node_info import NodeInfo
from pyjraft.node.options import NodeOptions
from pyjraft.node.ratelimit import RateLimitedLog
from pyjraft.node.reads import ReadManager
from pyjraft.node.registration import Registration
from pyjraft.node.snapshot_start import Recovered, open_storage
from pyjraft.node.snapshots import CompactedLogView, NodeSnapshots
from pyjraft.node.startup import open_registration
from pyjraft.node.state_machine import LeaderChangeContext, StateMachine, Status
from pyjraft.node.storage_retry import StorageRetry
from pyjraft.node.turns import QueueDelay, next_turn
from pyjraft.node.writer import LogWriter, settle
from pyjraft.storage.api import LogStorage, MetaStorage
from pyjraft.storage.snapshot import SnapshotStorage
from pyjraft.storage.snapshot_manifest import SnapshotManifest
from pyjraft.transport.base import Transport

log = logging.getLogger("pyjraft.node")


_Waiter = tuple[int, Done]
_TYPE = operator.itemgetter(2)
_NORMAL = int(EntryType.NORMAL)
_NOOP = int(EntryType.NOOP)
_CONFIG = int(EntryType.CONFIG)
_NORMAL_ONLY = {_NORMAL}


class Node(NodeFailure, NodeClock, NodeInfo, MembershipMethods):
    """One member of one raft group, driven on an asyncio loop. Create with `start`."""

    def __init__(
        self,
        options: NodeOptions,
        machine: StateMachine,
        transport: Transport,
        log_storage: LogStorage,
        meta: MetaStorage,
        *,
        rng: random.Random | None = None,
        snapshots: SnapshotStorage | None = None,
        recovered: Recovered | None = None,
    ) -> None:
        self.options = options
        self.transport = transport
        self._log = log_storage
        self._meta = meta
        self._fsm = FSMCaller(machine)
        recovered = recovered or Recovered(log_storage, meta, None, None, 0, False, False)
        self._fsm.applied_index = recovered.applied
        # The core reads the log through this view: compaction moves its start first.
        view = self._log_view = CompactedLogView(log_storage)
        o = options
        config = CoreConfig(
            id=o.id,
            voters=() if o.join else o.peers,
            catchup_margin=o.catchup_margin,
            catchup_timeout_ticks=o.catchup_timeout_ticks,
            group=o.group,
            election_ticks=o.election_ticks,
            read_lease_ticks=o.read_lease_ticks,
            heartbeat_ticks=1,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            max_inflight_msgs=o.max_inflight_appends,
            max_inflight_bytes=o.max_inflight_bytes,
            max_entries_per_msg=o.max_entries_per_append,
            max_bytes_per_msg=o.max_bytes_per_append,
            max_apply_bytes=o.apply_batch_bytes,
        )
        rng, snap, applied = rng or random.Random(), recovered.core_snapshot, recovered.applied
        self._core = RaftCore(config, view, meta.load(), rng, snapshot=snap, applied=applied)
        self.state = NodeState.RUNNING
        self.error: BaseException | None = None
        self._queue: list[tuple[bytes, Done]] = []
        self._waiting: dict[int, _Waiter] = {}
        self._flush_scheduled = False
        self._drive_scheduled = False
        self._handling: Generator[Awaitable[Any] | None, Any, None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._loop = asyncio.get_running_loop()
        self._writer = (
            LogWriter(
                self._loop,
                lambda entries: self._storage_retry.run_blocking(self._persist, None, entries),
                f"raft-writer-{o.group}",
            )
            if o.leader_write_thread and o.sync
            else None
        )
        # The leader's writes on that thread, oldest first, with their Readies.
        self._writes: collections.deque[tuple[Ready, asyncio.Future[None]]] = collections.deque()
        # Entries handed to the writer thread and not yet durable: held in
        # memory until then, so they count against max_pending_proposals.
        self._unwritten = 0
        self._writer_rounds = 0
        self._soft = SoftState(NONE, self._core.role, self._core.term)
        core = self._core
        self.events = NodeEvents(
            o.group, o.id, lambda: core.term, initial=self._soft, hard_state=core.hard_state
        )
        """Elections, votes, role changes and failure: logged, counted, kept."""
        self._fsm.log = self.events.log
        self.metrics = NodeMetrics() if o.metrics else None
        """Latency and batch-size histograms (``NodeOptions.metrics``), else None."""
        self._leader_started = False
        self._tick_handle: asyncio.TimerHandle | None = None
        self._tick_s = o.heartbeat_ms / 1000
        self._tick_base = self._loop.time()
        self._busy_poll_s = o.busy_poll_us / 1e6
        self._busy_poll = busy_poll.for_loop(self._loop) if o.busy_poll_us else None
        counters = "proposals batches readies syncs applied overloaded timer_wakeups bad_messages"
        self.stats: dict[str, int] = dict.fromkeys(counters.split(), 0)
        self._bad_log = RateLimitedLog(log, per_second=5)
        self._reads = ReadManager(self)
        self._membership = MembershipManager(self)
        # Every node answers its transport's admin service (`pyjraft.node.admin`).
        AdminService.for_transport(transport).host(self)
        self.registration: Registration | None = None
        """This instance's registration with its peers (None without a data_dir)."""
        self._queue_delay = QueueDelay(o.max_queue_delay_ms / 1000)
        self._storage_retry = StorageRetry(
            self.events, self.stats, o.storage_retry_timeout_ms / 1e3
        )
        self.heartbeat_gaps = HeartbeatGaps()
        """Gaps between the leader's heartbeats as this node, following, receives them."""
        self._snapshots = NodeSnapshots(self, snapshots, recovered)

    # -- lifecycle -----------------------------------------------------------

    @classmethod
    async def start(
        cls,
        options: NodeOptions,
        machine: StateMachine,
        transport: Transport,
        *,
        log_storage: LogStorage | None = None,
        meta: MetaStorage | None = None,
        rng: random.Random | None = None,
        snapshots: SnapshotStorage | None = None,
    ) -> Node:
        """Open storage (recovering term, vote and log, and loading the newest
        valid snapshot: `pyjraft.node.snapshot_start`), join the transport, start.

        Storage defaults to `SegmentLogStorage`, `FileMetaStorage` and
        `SnapshotStorage` under ``options.data_dir/<group>``, or in-memory
        storage (and no snapshots) when that is None.
        """
        o = await open_storage(options, machine, log_storage, meta, snapshots, log)
        try:
            registration = await open_registration(options, transport, o.log, o.meta)
        except BaseException:
            if o.snapshots is not None:
                o.snapshots.close()
            raise
        node = cls(
            options, machine, transport, o.log, o.meta, rng=rng, snapshots=o.snapshots, recovered=o
        )
        node.registration = registration
        node._snapshots.start()
        if registration is None:
            node._join()
        else:  # a new or wiped directory: its peers record this instance first
            registration.begin(node.events.log, node._join, node._fatal)
        if node._core.conf.voters:
            await node._fsm.configuration_committed(node._core.conf_at(node._core.commit_index))
        return node

    def _join(self) -> None:
        """Take part in the group: step its messages, tick."""
        if self.state is NodeState.RUNNING:
            self.transport.register_group(self.group, self._on_message)
            self._tick_base = self._loop.time()
            self._arm_timer(self._tick_base)

    async def shutdown(self) -> None:
        """Stop: fail pending callers with `ShutdownError`, finish the write in
        flight, call `StateMachine.on_shutdown`, close storage. Idempotent."""
        if self.state in (NodeState.STOPPING, NodeState.STOPPED):
            return
        was_error = self.state is NodeState.ERROR
        self.state = NodeState.STOPPING
        self._storage_retry.abort()
        self._stop_participating()
        # Proposed entries may still commit on the other replicas: their outcome
        # is unknown. Only the not-yet-proposed queue gets ShutdownError.
        self._fail_waiting(
            LeadershipLostError("node shut down before the entry was applied; outcome unknown")
        )
        self._fail_all(ShutdownError("node is shutting down"))
        # The Ready being handled must finish its write: a half-known durable
        # state would break the promise its messages make.
        try:
            await asyncio.wait_for(self._idle.wait(), 10.0)
        except TimeoutError:
            self.events.log.error("a Ready did not finish in 10 s")
        await self._snapshots.close()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self.registration is not None:
            await self.registration.close()
        if not was_error:
            await self._fsm.shutdown()
        with contextlib.suppress(Exception):
            self._log.close()
        self.state = NodeState.STOPPED

    # -- the public surface --------------------------------------------------

    def apply(self, data: bytes) -> asyncio.Future[Any]:
        """Replicate ``data``; the future resolves to the state machine's result for it.

        The awaited future raises `NotLeaderError` (with ``.leader``),
        `OverloadedError`, `ProposalDroppedError` (a leadership transfer is
        under way: not appended, retry), `LeadershipLostError` (outcome
        unknown), `ShutdownError`, `StateMachineError`, `NodeStorageError` or
        `ValueError` (too large). Cancelling it, or its awaiting task, does not
        withdraw the entry.

        A future rather than a coroutine: no coroutine object and frame per
        write (about 0.8 us of CPU each under load). Schedule it with
        `asyncio.ensure_future`, not `asyncio.create_task`.
        """
        fut: asyncio.Future[Any] = self._loop.create_future()
        try:
            # A cancelled caller's entry goes on regardless; settle skips its future.
            self.submit(data, partial(settle, fut))
        except Exception as exc:
            # Raised when awaited, as from a coroutine, not at the call.
            fut.set_exception(exc)
        return fut

    def submit(self, data: bytes, done: Done) -> None:
        """Replicate ``data``; call ``done(result, None)`` once it is applied here,
        or ``done(None, error)`` with one of `apply`'s errors.

        The callback form of `apply` (JRaft's ``Task`` with a ``Closure``): no
        coroutine or future per entry, for callers that pipeline many writes.
        Errors known at once (not leader, overloaded, shut down, too large) are
        raised instead of reported through ``done``. ``done`` runs on the event
        loop, serially with the state machine; it must be quick and not raise.
        """
        if self.state is not NodeState.RUNNING:
            self._check_running()
        if self._core.role is not Role.LEADER:
            raise NotLeaderError(self._core.leader)
        if len(data) > self.options.max_entry_bytes:
            raise ValueError(
                f"entry of {len(data)} bytes exceeds max_entry_bytes {self.options.max_entry_bytes}"
            )
        pending = len(self._queue) + len(self._waiting) + self._unwritten
        if pending >= self.options.max_pending_proposals or self._queue_delay.shedding:
            self.stats["overloaded"] += 1
            raise OverloadedError(
                self._queue_delay.reason(
                    pending, self.options.max_pending_proposals, self._loop.time()
                )
            )
        # Copy only what could change under us (a bytearray, a memoryview).
        self._queue.append((data if type(data) is bytes else bytes(data), done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_proposals)

    def read_index(self, lease: bool = False, timeout: float | None = None) -> asyncio.Future[int]:
        """A linearizable read: the future resolves to a read index once this node
        has applied at least that far; read the state machine then.

        ReadIndex by default: the leader confirms it still leads with one
        heartbeat round to a majority (reads of one loop turn share it). With
        ``lease``, a leader within its lease (check-quorum on; see
        `pyjraft.core.read_only` for the clock assumption) answers with no round
        trip. On a follower, the read index comes from the leader, and the
        follower serves once it has applied that far. Raises (when awaited)
        `NotLeaderError` (no leader known, or the leader asked stepped down;
        ``.leader`` says whom to try), `ReadTimeoutError` (after ``timeout``
        seconds, default `NodeOptions.read_timeout_ms`), `LeadershipLostError`
        (leadership changed before the read was confirmed), `ShutdownError`.
        Nothing is written: every failure is safe to retry.
        """
        t = self.options.read_timeout_ms / 1000 if timeout is None else timeout
        return self._reads.read_index(lease, t)

    async def snapshot(self) -> SnapshotManifest:
        """Take a snapshot of what is applied now (after the one in progress, if
        any: never two at once), then compact the log; returns its metadata once
        published. See `pyjraft.node.snapshots.NodeSnapshots.snapshot`."""
        self._check_running()
        return await self._snapshots.snapshot()

    def status(self) -> dict[str, Any]:
        """A snapshot of this node's state, for status pages and admin tools
        (`pyjraft.node.describe.status_of`)."""
        return status_of(self)

    def describe(self) -> dict[str, Any]:
        """Everything `status` says plus queue depths, timers, recent events and
        histograms: the dump printed on SIGUSR2 (`pyjraft.node.describe`)."""
        return describe_node(self)

    # -- inputs --------------------------------------------------------------

    def _on_message(self, msg: Message) -> None:
        if self.state is not NodeState.RUNNING:
            return
        core = self._core
        try:
            was_follower = core.role is Role.FOLLOWER
            if was_follower:
                # Ticks a sleeping follower has not been given yet: the lease
                # check and the election clock must be current before stepping.
                now = self._loop.time()
                self._catch_up(now)
            core.step(msg)
            if was_follower and type(msg) is Heartbeat and msg.src == core.leader:
                self.heartbeat_gaps.heartbeat(msg.src, msg.term, now)
            if was_follower and core.role is not Role.FOLLOWER:
                self._rearm_timer()
        except Exception as exc:
            self._fatal(exc)
            return
        self._send_eager()
        self._schedule_drive()

    def _flush_proposals(self) -> None:
        self._flush_scheduled = False
        queue = self._queue
        limit = self.options.max_proposals_per_turn
        if len(queue) > limit:
            # One bounded batch per loop turn; the rest after timers and sockets.
            queue, self._queue = queue[:limit], queue[limit:]
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_proposals)
        else:
            self._queue = []
        if not queue:
            return
        if self.state is not NodeState.RUNNING:
            fail_queue(queue, ShutdownError("node is not running"))
            return
        core = self._core
        if core.role is not Role.LEADER:
            fail_queue(queue, NotLeaderError(core.leader))
            return
        try:
            last = core.propose_batch(list(map(_DATA, queue)))
        except ProposalDroppedError as exc:  # a leadership transfer: nothing appended
            fail_queue(queue, exc)
            return
        except Exception as exc:
            fail_queue(queue, exc)
            self._fatal(exc)
            return
        first = last - len(queue) + 1
        self._waiting.update(
            zip(range(first, last + 1), zip(repeat(core.term), map(_DONE, queue)), strict=True)
        )
        self.stats["proposals"] += len(queue)
        self.stats["batches"] += 1
        self._queue_delay.proposed(last, self._loop.time())
        if self.metrics is not None:
            self.metrics.proposed(len(queue), last)
        self._send_eager()
        # Out now, not in a later loop turn: in between, the loop would read
        # sockets and step what they hold (a late acknowledgement, say) before
        # the new entries leave -- on the latency path.
        self.transport.flush()
        if self._busy_poll is not None:
            self._busy_poll.extend(self._busy_poll_s)
        self._schedule_drive()

    def _send_eager(self) -> None:
        msgs = self._core.take_eager_messages()
        if msgs:
            self.transport.send(msgs)

    # -- the Ready pipeline --------------------------------------------------

    def _schedule_drive(self) -> None:
        # Once per loop turn: everything stepped in this turn goes into one Ready.
        if not self._drive_scheduled and self._handling is None:
            self._drive_scheduled = True
            self._loop.call_soon(self._drive)

    def _drive(self) -> None:
        self._drive_scheduled = False
        core = self._core
        if (
            self._handling is None
            and self.state is NodeState.RUNNING
            and (core.has_ready() or self._snapshots.wants_save())
        ):
            self._idle.clear()
            wrote = True
            while wrote:
                rd = core.ready()
                self._handling = self._handle(rd)
                if not self._resume(None, None):
                    return  # waiting; _resumed goes on
                if not core.has_ready():
                    break
                # One Ready per loop turn: a long catch-up (say, re-applying the
                # log after a restart) must not starve heartbeats and votes. But a
                # write may have committed entries a follower acknowledged first:
                # those are applied now, not a loop turn later (the latency path),
                # unless this Ready applied some already (one apply batch a turn).
                wrote = (
                    bool(rd.entries) and not rd.committed_entries and core.log.has_next_committed()
                )
            else:
                self._schedule_drive()
                return
        if self._handling is None:
            self._idle.set()

    def _resume(self, value: Any, exc: BaseException | None) -> bool:
        """Run the Ready handler on until it waits (False) or ends (True)."""
        gen = self._handling
        assert gen is not None
        try:
            while True:
                awaiting = gen.send(value) if exc is None else gen.throw(exc)
                value = exc = None
                if awaiting is None:
                    continue
                fut = asyncio.ensure_future(awaiting)
                if not fut.done():
                    fut.add_done_callback(self._resumed)
                    return False
                if fut.cancelled():
                    exc = asyncio.CancelledError()
                else:
                    exc = fut.exception()
                    value = None if exc is not None else fut.result()
        except StopIteration:
            pass
        except BaseException as e:
            self._fatal(e)
        self._handling = None
        return True

    def _resumed(self, fut: asyncio.Future[Any]) -> None:
        # What the handler waited for is done: go on, then (next turn) to the next Ready.
        if fut.cancelled():
            self._resume(None, asyncio.CancelledError())
        elif fut.exception() is not None:
            self._resume(None, fut.exception())
        else:
            self._resume(fut.result(), None)
        if self._handling is None:
            self._schedule_drive()  # not now: this Ready may have applied a batch

    def _handle(self, rd: Ready) -> Generator[Awaitable[Any] | None, Any, None]:
        """Handle one Ready; yields what it must wait for (see the module doc)."""
        self.stats["readies"] += 1
        if rd.bad_messages:
            self.stats["bad_messages"] += len(rd.bad_messages)
            for bad in rd.bad_messages:
                self._bad_log.warning("raft node %s/%s dropped a %s", self.group, self.id, bad)
        if rd.conf_events:
            # Before the soft state: a leader that removed itself finished its
            # change (done) before it stepped down.
            self._membership.events(rd.conf_events)
        if rd.soft_state is not None:
            yield self._on_soft_state(rd.soft_state)
        if rd.read_states:
            self._reads.confirmed(rd.read_states)
        if rd.eager_messages:
            self.transport.send(rd.eager_messages)
        if rd.snapshots_to_send:
            self._snapshots.send(rd.snapshots_to_send)
        if rd.snapshot is not None:
            # Installed before anything else of this Ready (the contract's step 2).
            yield from self._storage_idle()
            yield from self._snapshots.install_steps(rd.snapshot)
        pipelined = False
        if rd.must_sync:
            hard_state = rd.hard_state
            entries = rd.entries
            try:
                leader = self._core.role is Role.LEADER
                if self._writer is not None and hard_state is None and leader:
                    # Handed to the writer thread; this Ready goes on. Its messages
                    # and its advance wait for the write (`_written`); what it
                    # commits was durable on a majority before.
                    fut = self._writer.submit(entries)
                    self._writes.append((rd, fut))
                    self._unwritten += len(entries)
                    fut.add_done_callback(self._written)
                    pipelined = True
                else:
                    yield from self._storage_idle()
                    # Whatever is queued for the network must not wait for the disk.
                    self.transport.flush()
                    # Out of file descriptors: retried, this Ready waiting (storage_retry).
                    yield from self._storage_retry.run(self._persist, hard_state, entries)
                    self.stats["syncs"] += 1
                    if hard_state is not None:
                        self.events.hard_state(hard_state)
            except Exception as exc:
                if isinstance(exc, NodeStorageError):
                    raise
                raise NodeStorageError(f"storage write failed: {exc!r}") from exc
        committed = rd.committed_entries
        if rd.messages and not pipelined:
            self.transport.send(rd.messages)
            if committed:
                # Acknowledgements (a follower's) and appends (a leader's) are on
                # someone's latency path; the state machine can wait for them.
                self.transport.flush()
        if committed:
            metrics = self.metrics
            if metrics is not None and self._core.role is Role.LEADER:
                metrics.committed(rd.commit_index)
            step = self.options.max_applies_per_turn
            for start in range(0, len(committed), step):
                if start:  # bounded work per loop turn: heartbeats and votes go first
                    yield next_turn(self._loop)
                    if self.state is not NodeState.RUNNING:
                        return
                yield from self._apply(committed[start : start + step])
            if not self._leader_started and self._core.role is Role.LEADER:
                term = self._core.term
                if any(e.type == _NOOP and e.term == term for e in committed):
                    # Everything before our no-op is applied: the machine is current.
                    self._leader_started = True
                    yield self._fsm.leader_start(term)
        if self._snapshots.due():
            # Between applies: the machine holds exactly what it applied so far.
            yield from self._snapshots.save_steps()
        if not pipelined:
            self._core.advance(rd)
        # advance may have committed our own entries (leader counted itself).
        self._send_eager()

    def _apply(self, entries: list[Entry]) -> Generator[Awaitable[Any] | None, Any, None]:
        """Apply committed ``entries`` and settle their callers (part of `_handle`)."""
        metrics = self.metrics
        all_normal = set(map(_TYPE, entries)) == _NORMAL_ONLY
        user = entries if all_normal else [e for e in entries if e.type == _NORMAL]
        results: list[Any] = []
        if user:
            t0 = _clock() if metrics is not None else 0.0
            applied = self._fsm.apply_now(user)
            if isinstance(applied, list):
                results = applied
            else:
                results = yield applied
            if metrics is not None:
                metrics.applied(t0)
        self._complete(entries, user, all_normal, results)
        if not all_normal:
            for e in entries:
                if e.type == _CONFIG:
                    conf = conf_codec.decode(e.data)
                    if self.registration is not None and not conf.voters_outgoing:
                        self.registration.forget_removed(conf_codec.members(conf))
                    yield self._fsm.configuration_committed(conf)

    def _storage_idle(self) -> Generator[Awaitable[Any] | None, Any, None]:
        """Wait until nobody else writes the log: storage has one writer at a time."""
        if self._writes:
            # A former leader's writes go first, in order; and their Readies
            # advance before this one.
            yield self._writes[-1][1]
            self._written(None)
        compacting = self._snapshots.compacting
        if compacting is not None:
            # A compaction on the writer thread; its failure is handled there.
            yield asyncio.wait([compacting])

    def _written(self, _fut: asyncio.Future[None] | None) -> None:
        """Writes of the writer thread finished: advance their Readies, in order,
        and send the messages that waited for them."""
        writes = self._writes
        failed: BaseException | None = None
        while writes and writes[0][1].done():
            rd, fut = writes.popleft()
            self._unwritten -= len(rd.entries)
            exc = fut.exception()  # never cancelled: nobody else holds it
            if exc is not None or failed is not None:
                failed = failed or exc
                continue
            if self.state is NodeState.RUNNING:
                self._core.advance(rd)
                if rd.messages:
                    self.transport.send(rd.messages)
        assert self._writer is not None
        rounds = self._writer.rounds
        self.stats["syncs"] += rounds - self._writer_rounds
        self._writer_rounds = rounds
        if failed is not None:
            self._fatal(NodeStorageError(f"storage write failed: {failed!r}"))
            return
        if self.state is NodeState.RUNNING:
            self._send_eager()
            self._schedule_drive()

    def _persist(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        metrics = self.metrics
        if hard_state is not None:
            t0 = _clock()
            self._meta.save(hard_state)
            if metrics is not None:
                metrics.saved_meta(t0)
        if entries:
            t0 = _clock() if metrics is not None else 0.0
            first = entries[0].index
            if first <= self._log.last_index():
                self._log.truncate_suffix(first - 1)
            self._log.append(entries)
            if metrics is not None:
                metrics.appended(t0)

    def _complete(
        self, entries: list[Entry], user: list[Entry], all_normal: bool, results: list[Any]
    ) -> None:
        """Record ``entries`` as applied and settle the callers waiting on them."""
        self._fsm.applied_index = entries[-1].index
        self.stats["applied"] += len(user)
        self._reads.applied(entries[-1].index)
        waiting = self._waiting
        if not waiting:
            return
        self._queue_delay.applied(entries[-1].index, self._loop.time())
        pop = waiting.pop
        if all_normal:
            pairs: Iterable[tuple[Entry, Any]] = zip(entries, results, strict=True)
        else:
            it = iter(results)
            pairs = ((e, next(it) if e.type == _NORMAL else None) for e in entries)
        for e, result in pairs:
            w = pop(e.index, None)
            if w is None:
                continue
            if e.term == w[0]:
                w[1](result, None)
            else:
                lost = LeadershipLostError(f"entry {e.index} was overwritten by a new leader")
                w[1](None, lost)

    async def _on_soft_state(self, soft: SoftState) -> None:
        old = self._soft
        self._soft = soft
        self.events.soft_state(soft)
        self._membership.role_changed(soft.leader, soft.role)
        if old.role is Role.LEADER and soft.role is not Role.LEADER:
            if self.metrics is not None:
                self.metrics.leadership_ended()
            self._fail_waiting(
                LeadershipLostError(
                    f"leadership lost in term {old.term}; the outcome is unknown "
                    "(the entry may still commit)"
                )
            )
            self._reads.leadership_lost()
            if self._leader_started:
                self._leader_started = False
                await self._fsm.leader_stop(Status("stepped_down", f"term {soft.term}"))
        following_old = old.role not in (Role.LEADER,) and old.leader not in (NONE,)
        following_new = soft.role not in (Role.LEADER,) and soft.leader not in (NONE,)
        if following_old and (not following_new or old.leader != soft.leader):
            await self._fsm.stop_following(LeaderChangeContext(old.leader, old.term))
        if following_new and (not following_old or old.leader != soft.leader):
            await self._fsm.start_following(LeaderChangeContext(soft.leader, soft.term))

    def _kick(self) -> None:
        """Send and drive what a snapshot transfer's end or restore produced."""
        if self.state is NodeState.RUNNING:
            self._send_eager()
            self._schedule_drive()

    def _running(self) -> bool:
        return self.state is NodeState.RUNNING


_DATA = operator.itemgetter(0)
_DONE = operator.itemgetter(1)
