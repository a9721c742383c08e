"""Linearizable reads for a `Node`: ReadIndex, lease reads and follower reads.

Theory of operation
-------------------
`Node.read_index` returns a future of an index: once it resolves, this node
has applied at least that far, and anything the state machine answers from
then on is linearizable (it reflects every write acknowledged before the
read began).

On the leader, reads asked in one loop turn share one request to the core
(`RaftCore.read_index`, one context per turn and lease flag), hence one
heartbeat round (`pyjraft.core.read_only`); the core answers in
``Ready.read_states``, and each read resolves once this node has applied the
read index. A lease read first gives the core every tick that passed (a
stalled loop must not stretch the lease), then is answered at once while the
lease holds, or with a round otherwise.

On a follower, a read asks its leader over the shared RPC server (service
``raft.read_index``, one for every group of the process) for a read index,
which the leader confirms exactly as for its own reads but answers without
waiting for its own apply; the follower then waits until it has applied that
far. Errors: `NotLeaderError` (no leader known, or the one asked no longer
leads: retry elsewhere), `ReadTimeoutError`, `LeadershipLostError` (this
node lost leadership, or the leader could not be reached, before the read
was confirmed: nothing was read, retrying is safe), `ShutdownError`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from pyjraft.core.errors import NotLeaderError
from pyjraft.core.read_only import ReadState
from pyjraft.core.types import NONE, Role
from pyjraft.node.errors import LeadershipLostError, ReadTimeoutError, ShutdownError

if TYPE_CHECKING:
    from pyjraft.node.node import Node
    from pyjraft.transport.base import Transport

SERVICE = "raft.read_index"
"""The RPC service followers ask their leader's process for a read index."""

MAX_REQUEST_BYTES = 1024
"""A read index request is a tiny map."""

_Waiter = Callable[[int | None, BaseException | None], None]


class ReadManager:
    """The reads of one `Node` (see the module docstring)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._loop = node._loop
        self._ctx_no = itertools.count(1)
        # Reads asked this loop turn, by lease flag, waiting to go to the core.
        self._batch: dict[bool, list[_Waiter]] = {}
        self._scheduled = False
        # Sent to the core, waiting for its read state: ctx -> callbacks.
        self._asked: dict[bytes, list[_Waiter]] = {}
        # Confirmed, waiting for this node's apply: (index, seq, callback).
        self._apply_heap: list[tuple[int, int, _Waiter]] = []
        self._seq = itertools.count()
        # In the node's counters, so that metrics and describe show them.
        self.stats = node.stats
        self.stats.update(reads=0, lease_reads=0, follower_reads=0, read_errors=0)
        self._metrics = node.metrics
        _register(node.transport, node.group, self)

    # -- the public surface --------------------------------------------------

    def read_index(self, lease: bool, timeout: float) -> asyncio.Future[int]:
        """See `Node.read_index`."""
        fut: asyncio.Future[int] = self._loop.create_future()
        done = _settler(fut)
        if self._metrics is not None:
            fut.add_done_callback(partial(self._metrics.read, self._metrics.clock()))
        handle = self._loop.call_later(
            timeout, done, None, ReadTimeoutError(f"read not confirmed within {timeout} s")
        )
        fut.add_done_callback(lambda _: handle.cancel())
        node = self._node
        try:
            node._check_running()
        except Exception as exc:
            done(None, exc)
            return fut
        self.stats["reads"] += 1
        if lease:
            self.stats["lease_reads"] += 1
        core = node._core
        if core.role is Role.LEADER:
            self._ask(lease, lambda index, exc: self._then_applied(index, exc, done))
        elif core.leader != NONE:
            self.stats["follower_reads"] += 1
            self._ask_leader(core.leader, lease, timeout, done)
        else:
            done(None, NotLeaderError(NONE))
        return fut

    # -- the leader's side ---------------------------------------------------

    def _ask(self, lease: bool, done: _Waiter) -> None:
        self._batch.setdefault(lease, []).append(done)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, {}
        node = self._node
        core = node._core
        for lease, waiters in batch.items():
            if node.state.value != "running":
                _fail(waiters, ShutdownError("node is not running"))
                continue
            if core.role is not Role.LEADER:
                _fail(waiters, NotLeaderError(core.leader))
                continue
            ctx = b"%d" % next(self._ctx_no)
            self._asked[ctx] = waiters
            try:
                if lease:
                    node._catch_up_leader(self._loop.time())
                core.read_index(ctx, lease)
            except Exception as exc:
                del self._asked[ctx]
                _fail(waiters, exc)
                continue
        node._send_eager()
        node._schedule_drive()

    def confirmed(self, states: list[ReadState]) -> None:
        """The core's read states from a `Ready`."""
        for st in states:
            waiters = self._asked.pop(st.ctx, None)
            if waiters is not None:
                for w in waiters:
                    w(st.index, None)

    def _then_applied(self, index: int | None, exc: BaseException | None, done: _Waiter) -> None:
        if exc is not None or index is None:
            done(None, exc)
        elif self._node.applied_index >= index:
            done(index, None)
        else:
            heapq.heappush(self._apply_heap, (index, next(self._seq), done))

    def applied(self, index: int) -> None:
        """This node applied up to ``index``: serve the reads waiting for it."""
        heap = self._apply_heap
        while heap and heap[0][0] <= index:
            read_index, _, done = heapq.heappop(heap)
            done(read_index, None)

    def leadership_lost(self) -> None:
        """Reads asked of the core and not confirmed are gone with the leadership."""
        asked, self._asked = self._asked, {}
        err = LeadershipLostError("leadership lost before the read was confirmed; retry")
        for waiters in asked.values():
            _fail(waiters, err)

    def close(self, exc: BaseException) -> None:
        """Fail every read (the node stopped)."""
        self.leadership_lost()
        batch, self._batch = self._batch, {}
        for waiters in batch.values():
            _fail(waiters, exc)
        heap, self._apply_heap = self._apply_heap, []
        _fail([w for _, _, w in heap], exc)
        _unregister(self._node.transport, self._node.group)

    # -- follower reads ------------------------------------------------------

    def _ask_leader(self, leader: str, lease: bool, timeout: float, done: _Waiter) -> None:
        node = self._node
        request = {"group": node.group, "lease": lease}
        call = asyncio.ensure_future(node.transport.call(leader, SERVICE, request, timeout))

        def answered(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                done(None, LeadershipLostError("read cancelled"))
                return
            exc = f.exception()
            if exc is not None:
                self.stats["read_errors"] += 1
                done(None, LeadershipLostError(f"asking leader {leader} for a read index: {exc}"))
                return
            reply = f.result()
            index = reply.get("index") if isinstance(reply, dict) else None
            if type(index) is not int or index < 0:
                hint = reply.get("leader", NONE) if isinstance(reply, dict) else NONE
                done(None, NotLeaderError(hint if isinstance(hint, str) else NONE))
                return
            self._then_applied(index, None, done)

        call.add_done_callback(answered)

    def serve(self, lease: bool) -> asyncio.Future[dict[str, Any]]:
        """A follower asks this node (its leader) for a read index."""
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        core = self._node._core
        if core.role is not Role.LEADER or self._node.state.value != "running":
            fut.set_result({"error": "not_leader", "leader": core.leader})
            return fut

        def answer(index: int | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if index is None:
                leader = core.leader if core.role is not Role.LEADER else NONE
                fut.set_result({"error": "not_leader", "leader": leader, "reason": str(exc)})
            else:
                fut.set_result({"index": index})

        self._ask(lease, answer)
        return fut


def _settler(fut: asyncio.Future[int]) -> _Waiter:
    def done(index: int | None, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            assert index is not None
            fut.set_result(index)

    return done


def _fail(waiters: list[_Waiter], exc: BaseException) -> None:
    for w in waiters:
        w(None, exc)


# One `raft.read_index` service per transport, routing by group.
_managers: weakref.WeakKeyDictionary[Any, dict[str, ReadManager]] = weakref.WeakKeyDictionary()


def _register(transport: Transport, group: str, manager: ReadManager) -> None:
    groups = _managers.get(transport)
    if groups is None:
        groups = _managers[transport] = {}
        transport.register_service(
            SERVICE, _handler(transport), max_request_bytes=MAX_REQUEST_BYTES
        )
    groups[group] = manager


def _unregister(transport: Transport, group: str) -> None:
    groups = _managers.get(transport)
    if groups is not None and groups.get(group) is not None:
        del groups[group]


def _handler(transport: Transport) -> Callable[[Any], Any]:
    ref = weakref.ref(transport)

    def handle(request: Any) -> Any:
        t = ref()
        groups = _managers.get(t) if t is not None else None
        if not isinstance(request, dict) or groups is None:
            raise ValueError("a read index request is {'group': str, 'lease': bool}")
        group, lease = request.get("group"), request.get("lease", False)
        manager = groups.get(group) if isinstance(group, str) else None
        if manager is None or type(lease) is not bool:
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            fut.set_result({"error": "unknown_group", "group": str(group)[:100]})
            return fut
        return manager.serve(lease)

    return handle
