"""`Client`: the asyncio client of the replicated KV store.

It follows the leader and retries with `pyjraft.client.RaftClient`: reads
(and watches) are retried whatever happened, since they change nothing;
writes only when the cluster said nothing was proposed (not leader,
overloaded, unavailable, connection refused). Otherwise a write raises
`pyjraft.client.UnknownOutcomeError`: it may or may not have been applied
(read to find out; a write with a compare, such as `compare_and_set` on a
mod revision, can be retried safely by the caller).

Keys and values are bytes; a `str` is taken as its UTF-8 encoding.
"""

from __future__ import annotations

import collections
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from pyjraft.client import INVALID_REQUEST, RaftClient, RouteTable, ServiceError
from pyjraft.kv.errors import CompactedError, InvalidRequestError
from pyjraft.kv.service import KV_SERVICE
from pyjraft.kv.types import (
    CasResult,
    CompactResult,
    Compare,
    DeleteRangeResult,
    DeleteResult,
    Event,
    GetManyResult,
    KeyValue,
    Op,
    PutResult,
    ReadConsistency,
    ScanResult,
    TxnResult,
    key_range,
    kv_or_none,
)
from pyjraft.transport import RpcClient
from pyjraft.transport.tls import TlsConfig

Bytes = bytes | str
"""A key or value: bytes, or a str taken as UTF-8."""

_UNSET: Any = object()


def _b(v: Bytes) -> bytes:
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    raise TypeError(f"expected bytes or str, got {type(v).__name__}")


def _range_fields(start: Bytes, end: Bytes | None, prefix: Bytes | None) -> dict[str, Any]:
    if prefix is not None:
        if start or end is not None:
            raise ValueError("give either prefix or start/end, not both")
        return {"prefix": _b(prefix)}
    return {"start": _b(start), "end": None if end is None else _b(end)}


def _scan_result(v: dict[str, Any]) -> ScanResult:
    return ScanResult([KeyValue.from_wire(w) for w in v["kvs"]], bool(v["more"]), v["revision"])


class Client:
    """Talks to a KV cluster (``peers``: addresses, a sequence or comma-separated).

    ``timeout`` bounds each attempt, ``deadline`` each call (retries
    included); ``group`` is the raft group of the cluster. ``rpc`` (an
    `RpcClient`) and ``routes`` (a `RouteTable`) can be shared between
    clients; ``rng`` seeds the retry jitter. ``watch_wait`` is how long one
    watch poll waits on the server for an event. ``tls`` (a `TlsConfig` with
    a client certificate, `TlsConfig.load`) speaks mutual TLS to the
    replicas.
    """

    def __init__(
        self,
        peers: Sequence[str] | str,
        *,
        group: str = "kv",
        timeout: float = 2.0,
        deadline: float = 10.0,
        rpc: RpcClient | None = None,
        routes: RouteTable | None = None,
        rng: random.Random | None = None,
        watch_wait: float = 5.0,
        tls: TlsConfig | None = None,
    ) -> None:
        if watch_wait <= 0:
            raise ValueError("watch_wait must be positive")
        if tls is not None and rpc is not None:
            raise ValueError("give tls or rpc, not both (an RpcClient carries its own TLS)")
        self._own_rpc = rpc is None
        self.rpc = rpc if rpc is not None else RpcClient(tls=tls)
        self.group = group
        self.peers = peers
        self.raft = RaftClient(
            group, peers, rpc=self.rpc, timeout=timeout, deadline=deadline, routes=routes, rng=rng
        )
        """The underlying `RaftClient` (its ``stats`` count attempts, redirects...)."""
        self.timeout = timeout
        self.deadline = deadline
        self.watch_wait = watch_wait
        self._rng = rng

    async def _call(
        self, request: dict[str, Any], *, idempotent: bool, deadline: float | None = None
    ) -> Any:
        try:
            value = await self.raft.call(
                KV_SERVICE, request, idempotent=idempotent, deadline=deadline
            )
        except ServiceError as e:
            if e.code == INVALID_REQUEST:
                raise InvalidRequestError(e.message) from None
            raise
        if type(value) is dict and "error" in value:
            code, message = str(value["error"]), str(value.get("message", ""))
            if code == INVALID_REQUEST:
                raise InvalidRequestError(message)
            raise ServiceError(code, message)
        return value

    # -- reads --------------------------------------------------------------------------

    async def get(
        self,
        key: Bytes,
        *,
        read: ReadConsistency = "linearizable",
        deadline: float | None = None,
    ) -> KeyValue | None:
        """``key``'s key-value, or None if absent."""
        v = await self._call(
            {"op": "get", "key": _b(key), "read": read}, idempotent=True, deadline=deadline
        )
        return kv_or_none(v["kv"])

    async def get_many(
        self,
        keys: Iterable[Bytes],
        *,
        read: ReadConsistency = "linearizable",
        deadline: float | None = None,
    ) -> GetManyResult:
        """Several keys at one revision (None for each absent one)."""
        v = await self._call(
            {"op": "get_many", "keys": [_b(k) for k in keys], "read": read},
            idempotent=True,
            deadline=deadline,
        )
        return GetManyResult([kv_or_none(w) for w in v["kvs"]], v["revision"])

    async def scan(
        self,
        start: Bytes = b"",
        end: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        limit: int = 0,
        reverse: bool = False,
        keys_only: bool = False,
        read: ReadConsistency = "linearizable",
        deadline: float | None = None,
    ) -> ScanResult:
        """One page of the keys in ``[start, end)`` (``end`` None: no upper
        bound) or starting with ``prefix``, ascending (descending with
        ``reverse``): at most ``limit`` (0: the server's page size) and at most
        the server's reply budget. ``more`` says the range goes on."""
        req = {
            "op": "scan",
            **_range_fields(start, end, prefix),
            "limit": limit,
            "reverse": reverse,
            "keys_only": keys_only,
            "read": read,
        }
        return _scan_result(await self._call(req, idempotent=True, deadline=deadline))

    async def scan_all(
        self,
        start: Bytes = b"",
        end: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        reverse: bool = False,
        keys_only: bool = False,
        read: ReadConsistency = "linearizable",
        page: int = 0,
    ) -> AsyncIterator[KeyValue]:
        """Every key of the range, page by page (each page is its own read, so
        the whole is not one snapshot)."""
        lo, hi = key_range(_b(start), None if end is None else _b(end), None)
        if prefix is not None:
            lo, hi = key_range(lo, hi, _b(prefix))
        while True:
            res = await self.scan(
                lo, hi, limit=page, reverse=reverse, keys_only=keys_only, read=read
            )
            for kv in res.kvs:
                yield kv
            if not res.more or not res.kvs:
                return
            if reverse:
                hi = res.kvs[-1].key
            else:
                lo = res.kvs[-1].key + b"\0"

    # -- writes -------------------------------------------------------------------------

    async def put(self, key: Bytes, value: Bytes, *, deadline: float | None = None) -> PutResult:
        """Set ``key`` to ``value``."""
        v = await self._call(
            {"op": "put", "key": _b(key), "value": _b(value)}, idempotent=False, deadline=deadline
        )
        return PutResult(v["revision"], kv_or_none(v["prev"]))

    async def put_if_absent(
        self, key: Bytes, value: Bytes, *, deadline: float | None = None
    ) -> CasResult:
        """Set ``key`` only if it is absent (``prev``: the existing one if not)."""
        v = await self._call(
            {"op": "put_if_absent", "key": _b(key), "value": _b(value)},
            idempotent=False,
            deadline=deadline,
        )
        return CasResult(bool(v["succeeded"]), v["revision"], kv_or_none(v["prev"]))

    async def compare_and_set(
        self,
        key: Bytes,
        value: Bytes,
        *,
        expect_value: Bytes | None = _UNSET,
        expect_mod_revision: int | None = None,
        deadline: float | None = None,
    ) -> CasResult:
        """Set ``key`` only if its value is ``expect_value`` (None: absent) or,
        instead, its mod revision is ``expect_mod_revision`` (0: absent)."""
        req: dict[str, Any] = {"op": "cas", "key": _b(key), "value": _b(value)}
        if (expect_value is _UNSET) == (expect_mod_revision is None):
            raise ValueError("give exactly one of expect_value, expect_mod_revision")
        if expect_mod_revision is not None:
            req["expect_mod_revision"] = expect_mod_revision
        else:
            req["expect_value"] = None if expect_value is None else _b(expect_value)
        v = await self._call(req, idempotent=False, deadline=deadline)
        return CasResult(bool(v["succeeded"]), v["revision"], kv_or_none(v["prev"]))

    async def delete(self, key: Bytes, *, deadline: float | None = None) -> DeleteResult:
        """Delete ``key`` (``deleted`` False: it was absent)."""
        v = await self._call({"op": "delete", "key": _b(key)}, idempotent=False, deadline=deadline)
        return DeleteResult(bool(v["deleted"]), v["revision"], kv_or_none(v["prev"]))

    async def delete_range(
        self,
        start: Bytes = b"",
        end: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        prev_kv: bool = False,
        deadline: float | None = None,
    ) -> DeleteRangeResult:
        """Delete every key of ``[start, end)`` or starting with ``prefix``
        (``delete_range()`` deletes everything)."""
        req = {"op": "delete_range", **_range_fields(start, end, prefix), "prev_kv": prev_kv}
        v = await self._call(req, idempotent=False, deadline=deadline)
        return DeleteRangeResult(
            v["deleted"], v["revision"], [KeyValue.from_wire(w) for w in v["prev_kvs"]]
        )

    async def txn(
        self,
        compare: Iterable[Compare] = (),
        success: Iterable[Op] = (),
        failure: Iterable[Op] = (),
        *,
        deadline: float | None = None,
    ) -> TxnResult:
        """If every ``compare`` holds, run the ``success`` ops, else the
        ``failure`` ops: atomically, at one revision (etcd's Txn)."""
        ok_ops = [o.wire for o in success]
        else_ops = [o.wire for o in failure]
        req = {
            "op": "txn",
            "compare": [c.to_wire() for c in compare],
            "success": ok_ops,
            "failure": else_ops,
        }
        writes = {"put", "delete", "delete_range"}
        read_only = not any(o[0] in writes for o in (*ok_ops, *else_ops))
        v = await self._call(req, idempotent=read_only, deadline=deadline)
        ops = ok_ops if v["succeeded"] else else_ops
        rev = v["revision"]
        return TxnResult(
            bool(v["succeeded"]),
            rev,
            [_txn_op_result(o[0], r, rev) for o, r in zip(ops, v["results"], strict=True)],
        )

    async def compact(self, revision: int, *, deadline: float | None = None) -> CompactResult:
        """Drop the event history before ``revision`` (at most the store's
        revision); watches from before it then get `CompactedError`."""
        v = await self._call(
            {"op": "compact", "revision": revision}, idempotent=False, deadline=deadline
        )
        return CompactResult(v["revision"], v["compact_revision"])

    # -- watch and status --------------------------------------------------------------

    def watch(
        self,
        key: Bytes | None = None,
        *,
        prefix: Bytes | None = None,
        start: Bytes | None = None,
        end: Bytes | None = None,
        start_revision: int = 0,
        deadline: float | None = None,
    ) -> Watch:
        """Watch one ``key``, a ``prefix`` or a range ``[start, end)`` from
        ``start_revision`` (0: changes from now on). Use as an async iterator of
        `Event`; see `Watch`."""
        given = sum(x is not None for x in (key, prefix)) + (start is not None or end is not None)
        if given != 1:
            raise ValueError("watch one of: key, prefix, or start/end")
        if key is not None:
            k = _b(key)
            fields: dict[str, Any] = {"start": k, "end": k + b"\0"}
        else:
            fields = _range_fields(b"" if start is None else start, end, prefix)
        wait = self.watch_wait
        # Its own routes: a follower serving a watch must not become the cached
        # leader of the writes.
        raft = RaftClient(
            self.group,
            self.peers,
            rpc=self.rpc,
            timeout=wait + self.timeout,
            deadline=self.deadline if deadline is None else deadline,
            rng=self._rng,
        )
        return Watch(raft, fields, start_revision, wait)

    async def status(self) -> dict[str, Any]:
        """The status of the replica that answers (the leader, when known)."""
        v = await self._call({"op": "status"}, idempotent=True)
        assert isinstance(v, dict)
        return v

    async def close(self) -> None:
        """Close the connections (when this client made its `RpcClient`)."""
        if self._own_rpc:
            await self.rpc.close()

    async def __aenter__(self) -> Client:
        """Use as ``async with Client(...) as kv:``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


def _txn_op_result(name: str, r: dict[str, Any], rev: int) -> Any:
    if name == "put":
        return PutResult(rev, kv_or_none(r["prev"]))
    if name == "delete":
        return DeleteResult(bool(r["deleted"]), rev, kv_or_none(r["prev"]))
    if name == "delete_range":
        return DeleteRangeResult(r["deleted"], rev, [KeyValue.from_wire(w) for w in r["prev_kvs"]])
    if name == "get":
        return kv_or_none(r["kv"])
    return ScanResult([KeyValue.from_wire(w) for w in r["kvs"]], bool(r["more"]), rev)


class Watch:
    """The changes to a key or range, in revision order, from a start revision.

    An async iterator of `Event` (``async for event in watch``); it ends
    only when closed. It polls the cluster (each poll waits on the server
    for changes) and resumes from its cursor on any replica, so it survives
    a leader change; no event is delivered twice or skipped. Raises
    `CompactedError` when its position is older than the history kept, and
    `pyjraft.client.DeadlineExceededError` when no replica answered within
    the client's deadline. ``revision`` is the store revision the last poll
    saw (progress, even without events).
    """

    def __init__(
        self, raft: RaftClient, fields: dict[str, Any], start_revision: int, wait: float
    ) -> None:
        self._raft = raft
        self._fields = fields
        self._cursor = (start_revision, 0)
        self._wait_ms = max(1, int(wait * 1000))
        self._buffer: collections.deque[Event] = collections.deque()
        self._closed = False
        self.revision = 0
        """The store revision seen by the last poll."""

    @property
    def server(self) -> str:
        """The replica that answered the last poll (``""`` before the first)."""
        return self._raft.leader

    @property
    def next_revision(self) -> int:
        """The revision of the next event to deliver (after those buffered)."""
        if self._buffer:
            return self._buffer[0].revision
        return self._cursor[0]

    async def poll(self) -> list[Event]:
        """Fetch the next events (waiting on the server up to ``watch_wait``);
        may return none. `__anext__` uses it; call it directly to see progress."""
        req = {
            "op": "watch",
            **self._fields,
            "start_revision": self._cursor[0],
            "start_sub": self._cursor[1],
            "wait_ms": self._wait_ms,
        }
        v = await self._raft.call(KV_SERVICE, req, idempotent=True)
        if v.get("compacted"):
            raise CompactedError(v["compact_revision"], v["revision"])
        events = [Event.from_wire(w) for w in v["events"]]
        rev, sub = v["next"]
        self._cursor = (rev, sub)
        self.revision = v["revision"]
        return events

    def __aiter__(self) -> Watch:
        """The watch is its own iterator."""
        return self

    async def __anext__(self) -> Event:
        """The next event (waits for one)."""
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            self._buffer.extend(await self.poll())
        return self._buffer.popleft()

    async def close(self) -> None:
        """End the iteration (the connection is the client's: nothing to release)."""
        self._closed = True
        self._buffer.clear()

    async def __aenter__(self) -> Watch:
        """Use as ``async with client.watch(...) as w:``."""
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close on leaving the block."""
        await self.close()


__all__ = ["Bytes", "Client", "Watch"]
