"""`KvService`: the ``kv`` RPC service of a replica -- writes, reads, watches, status.

Theory of operation
-------------------
One handler serves every request (a msgpack map, see
`pyjraft.kv.protocol`), on the transport the raft node uses.

* Writes are validated, encoded as a command and replicated with
  `pyjraft.client.serve_apply`: the reply is the state machine's result, or
  the client library's error convention (``not_leader``, ``overloaded``:
  nothing was proposed; ``unknown_outcome``). No task per write.
* Reads (``get``, ``get_many``, ``scan``) wait for `Node.read_index`, then
  read the local LMDB store: ``linearizable`` (the default) confirms
  leadership with a heartbeat round shared by the reads of one loop turn,
  ``lease`` needs no round while the leader's lease holds; on a follower,
  both ask the leader for the read index and serve locally once applied
  that far. ``serializable`` reads the local state at once, on any replica,
  and may be stale. A read index that fails answers ``not_leader`` (with
  the hint) or ``unavailable``: a read changes nothing, so the client
  retries it anywhere. No task per read either.
* A ``watch`` is a long poll: it answers at once with the events after the
  client's cursor, or waits (up to ``wait_ms``) for the store to change. A
  client resumes from the cursor in the reply on any replica, so a watch
  survives a leader change; a cursor before the compaction point is
  answered ``{"compacted": true, ...}``. Watches are served by whichever
  replica is asked, from its own applied history (in order, possibly behind
  the leader).
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from pyjraft.client import (
    INVALID_REQUEST,
    NOT_LEADER,
    UNAVAILABLE,
    error_reply,
    ok_reply,
    serve_apply,
)
from pyjraft.core.errors import NotLeaderError
from pyjraft.kv.machine import KvStateMachine
from pyjraft.kv.protocol import (
    WRITE_OPS,
    InvalidRequest,
    KvLimits,
    ReadRequest,
    check_fields,
    command_from_request,
    read_from_request,
)
from pyjraft.node import Node, NodeState

log = logging.getLogger("pyjraft.kv")

KV_SERVICE = "kv"
"""The RPC service name."""


def _replied(reply: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    fut.set_result(reply)
    return fut


class KvService:
    """Serves the ``kv`` RPC service for one replica (see the module doc).

    ``node`` is set once the raft node has started; until then every request
    is answered ``unavailable``.
    """

    def __init__(self, machine: KvStateMachine, limits: KvLimits | None = None) -> None:
        self.machine = machine
        self.store = machine.store
        self.limits = limits if limits is not None else KvLimits()
        self.node: Node | None = None
        self._changed: asyncio.Future[None] | None = None
        self.stats: dict[str, int] = {"writes": 0, "reads": 0, "watches": 0, "invalid": 0}
        """Requests served, by kind, and requests refused as invalid."""
        machine.add_listener(self._on_change)

    def handle(self, request: Any) -> Any:
        """Serve one request: a future of the reply (a coroutine for watches)."""
        try:
            op = check_fields(request)
            if op in WRITE_OPS:
                data = command_from_request(request, self.limits)
            else:
                read = read_from_request(request, self.limits)
        except InvalidRequest as e:
            self.stats["invalid"] += 1
            return _replied(error_reply(INVALID_REQUEST, str(e)))
        node = self.node
        if node is None:
            return _replied(error_reply(UNAVAILABLE, "the node is starting"))
        if op in WRITE_OPS:
            self.stats["writes"] += 1
            return serve_apply(node, data)
        if read.op == "status":
            return _replied(ok_reply(self.status()))
        if read.op == "watch":
            self.stats["watches"] += 1
            return self._watch(read)
        self.stats["reads"] += 1
        if node.state is not NodeState.RUNNING:
            return _replied(error_reply(UNAVAILABLE, f"node {node.id} is {node.state.value}"))
        if read.read == "serializable":
            return _replied(self.read_now(read))
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            barrier = node.read_index(lease=read.read == "lease")
        except Exception as e:
            self._barrier_failed(reply, e)
            return reply
        barrier.add_done_callback(partial(self._after_barrier, read, reply))
        return reply

    # -- reads ------------------------------------------------------------------------

    def _after_barrier(
        self, read: ReadRequest, reply: asyncio.Future[dict[str, Any]], barrier: asyncio.Future[int]
    ) -> None:
        if reply.done():
            return
        if barrier.cancelled():
            reply.set_result(error_reply(UNAVAILABLE, "read barrier cancelled"))
            return
        exc = barrier.exception()
        if exc is not None:
            self._barrier_failed(reply, exc)
            return
        try:
            reply.set_result(self.read_now(read))
        except Exception as e:
            reply.set_exception(e)

    @staticmethod
    def _barrier_failed(reply: asyncio.Future[dict[str, Any]], exc: BaseException) -> None:
        # Nothing was written: every failure is safe for the client to retry.
        if isinstance(exc, NotLeaderError):
            reply.set_result(error_reply(NOT_LEADER, str(exc), leader=exc.leader))
        else:
            reply.set_result(error_reply(UNAVAILABLE, f"read barrier: {type(exc).__name__}: {exc}"))

    def read_now(self, read: ReadRequest) -> dict[str, Any]:
        """Serve ``read`` (get, get_many or scan) from the local store, now."""
        store = self.store
        with store.read() as txn:
            if read.op == "get":
                value: dict[str, Any] = {"kv": store.get(txn, read.key)}
            elif read.op == "get_many":
                budget = self.limits.max_reply_bytes
                kvs: list[Any] = []
                size = 0
                for key in read.keys:
                    kv = store.get(txn, key)
                    size += 0 if kv is None else len(kv[0]) + len(kv[1])
                    if size > budget and kvs:
                        return error_reply(
                            INVALID_REQUEST,
                            f"get_many reply would exceed {budget} bytes; ask fewer keys",
                        )
                    kvs.append(kv)
                value = {"kvs": kvs}
            else:  # scan
                kvs, more = store.scan(
                    txn,
                    read.start,
                    read.end,
                    read.limit,
                    read.reverse,
                    read.keys_only,
                    self.limits.max_reply_bytes,
                )
                value = {"kvs": kvs, "more": more}
            value["revision"] = store.revision
        return ok_reply(value)

    # -- watches ----------------------------------------------------------------------

    def _on_change(self) -> None:
        self.store = self.machine.store
        fut, self._changed = self._changed, None
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _watch(self, w: ReadRequest) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + w.wait_ms / 1000
        rev, sub = w.start_revision, w.start_sub
        if rev == 0:
            rev, sub = self.store.revision + 1, 0
        while True:
            store = self.store
            if rev < store.compact_revision:
                return ok_reply(
                    {
                        "compacted": True,
                        "compact_revision": store.compact_revision,
                        "revision": store.revision,
                    }
                )
            with store.read() as txn:
                events, (rev, sub) = store.events(
                    txn, rev, sub, w.start, w.end, w.limit, self.limits.max_reply_bytes
                )
            remaining = deadline - loop.time()
            if events or remaining <= 0:
                return ok_reply(
                    {
                        "events": events,
                        "next": [rev, sub],
                        "revision": store.revision,
                        "compact_revision": store.compact_revision,
                    }
                )
            if self._changed is None:
                self._changed = loop.create_future()
            await asyncio.wait((self._changed,), timeout=remaining)

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The node's status plus the store's: revision, compaction, history size."""
        st: dict[str, Any] = self.node.status() if self.node is not None else {}
        store = self.store
        with store.read() as txn:
            keys = txn.stat(store.kv_db)["entries"]
            events = txn.stat(store.events_db)["entries"]
        st["kv"] = {
            "revision": store.revision,
            "compact_revision": store.compact_revision,
            "applied_index": store.applied_index,
            "durable_index": store.durable_index,
            "history_bytes": store.history_bytes,
            "history_events": events,
            "keys": keys,
            "machine": dict(self.machine.stats),
            "service": dict(self.stats),
        }
        return st


__all__ = ["KV_SERVICE", "KvService"]
