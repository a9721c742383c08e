"""The ``raft.snapshot`` RPC service: how a snapshot moves from a leader to a follower.

Theory of operation
-------------------
A follower *pulls* its leader's snapshot; the leader only offers it. The
transport authenticates the server a caller dials (with TLS, the server's
certificate must name the node id called), but not the caller of a service
(any client certificate may call any service). So the data must travel in
answers to requests the follower makes to the leader it follows, never in
requests someone makes to the follower:

1. ``offer`` (leader -> follower): "I, leader L of term T, have a snapshot
   for you; ask for transfer X". It carries nothing the follower trusts: the
   follower accepts only if it follows L in term T right now, and then asks
   L itself. A forged offer costs one refused request to L.
2. ``meta`` (follower -> leader): the snapshot's metadata (the encoded
   `pyjraft.storage.SnapshotManifest`), checked as hostile input.
3. ``read`` (follower -> leader): one chunk of one file, in order, a few in
   flight (`NodeOptions.snapshot_window`).
4. ``end`` (follower -> leader): the transfer is over, installed or not.

The transfer id (16 random bytes) names one transfer of one leader term;
the leader serves it to nobody else after it ends. One service serves every
group of a transport: requests name their group, and `SnapshotService`
hands them to that group's node.

Every request is a msgpack map checked here (`parse_request`) before any
node sees it: exact keys per op, types, ranges. A request that fails the
check is answered with an error and changes nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pyjraft.transport.base import Transport
from pyjraft.transport.limits import DEFAULT_MAX_REQUEST_BYTES

SERVICE = "raft.snapshot"
"""The RPC service name, shared by every group of a transport."""
MAX_REQUEST_BYTES = DEFAULT_MAX_REQUEST_BYTES
"""Largest encoded request. Requests hold ids and names only (a few hundred
bytes), but a smaller limit than the other services' default would move
their requests above it off the transport's fast path (it decodes at once
only what fits every service's limit); `parse_request` refuses anything but
the exact fields."""
TRANSFER_ID_BYTES = 16
MAX_CHUNK_BYTES = 16 << 20
"""Largest chunk a leader serves (`NodeOptions.snapshot_chunk_bytes` is at most this)."""
_MAX_U63 = (1 << 63) - 1
_MAX_NAME = 1024  # characters of a node id, group or file name (checked again downstream)
_MAX_REASON = 512

_KEYS: dict[str, frozenset[str]] = {
    "offer": frozenset({"op", "group", "leader", "term", "transfer", "index", "size"}),
    "meta": frozenset({"op", "group", "transfer"}),
    "read": frozenset({"op", "group", "transfer", "file", "offset", "size"}),
    "end": frozenset({"op", "group", "transfer", "ok", "reason"}),
}


class SnapshotRequestError(ValueError):
    """A ``raft.snapshot`` request that is malformed or not acceptable now."""


@dataclass(frozen=True, slots=True)
class Offer:
    """A leader offers transfer ``transfer`` of its snapshot at ``index`` (``size`` bytes)."""

    group: str
    leader: str
    term: int
    transfer: bytes
    index: int
    size: int


@dataclass(frozen=True, slots=True)
class MetaRequest:
    """A follower asks for the metadata of ``transfer``'s snapshot."""

    group: str
    transfer: bytes


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A follower asks for ``size`` bytes of ``file`` from ``offset``."""

    group: str
    transfer: bytes
    file: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class EndRequest:
    """A follower reports the end of ``transfer``: installed (``ok``) or not."""

    group: str
    transfer: bytes
    ok: bool
    reason: str


Request = Offer | MetaRequest | ReadRequest | EndRequest


def _int(value: Any, what: str, lo: int = 0, hi: int = _MAX_U63) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise SnapshotRequestError(f"{what}: not an integer in [{lo}, {hi}]")
    return value


def _str(value: Any, what: str, limit: int = _MAX_NAME) -> str:
    if type(value) is not str or not value or len(value) > limit:
        raise SnapshotRequestError(f"{what}: not a string of 1 to {limit} characters")
    return value


def _transfer(value: Any) -> bytes:
    if type(value) is not bytes or len(value) != TRANSFER_ID_BYTES:
        raise SnapshotRequestError(f"transfer: not {TRANSFER_ID_BYTES} bytes")
    return value


def parse_request(obj: Any) -> Request:
    """The request ``obj`` (a decoded msgpack value) holds; `SnapshotRequestError`
    saying what is wrong with it otherwise."""
    if type(obj) is not dict:
        raise SnapshotRequestError("a request is a map")
    op = obj.get("op")
    keys = _KEYS.get(op) if type(op) is str else None
    if keys is None:
        raise SnapshotRequestError(f"unknown op {op!r:.40}")
    if obj.keys() != keys:
        raise SnapshotRequestError(f"{op} takes exactly {sorted(keys)}")
    group = _str(obj["group"], "group")
    transfer = _transfer(obj["transfer"])
    if op == "offer":
        return Offer(
            group,
            _str(obj["leader"], "leader"),
            _int(obj["term"], "term", 1),
            transfer,
            _int(obj["index"], "index", 1),
            _int(obj["size"], "size"),
        )
    if op == "meta":
        return MetaRequest(group, transfer)
    if op == "read":
        return ReadRequest(
            group,
            transfer,
            _str(obj["file"], "file"),
            _int(obj["offset"], "offset"),
            _int(obj["size"], "size", 1, MAX_CHUNK_BYTES),
        )
    ok = obj["ok"]
    if type(ok) is not bool:
        raise SnapshotRequestError("ok: not a boolean")
    reason = obj["reason"]
    if type(reason) is not str or len(reason) > _MAX_REASON:
        raise SnapshotRequestError(f"reason: not a string of at most {_MAX_REASON} characters")
    return EndRequest(group, transfer, ok, reason)


def offer_request(offer: Offer) -> dict[str, Any]:
    """The wire form of ``offer``."""
    return {
        "op": "offer",
        "group": offer.group,
        "leader": offer.leader,
        "term": offer.term,
        "transfer": offer.transfer,
        "index": offer.index,
        "size": offer.size,
    }


def meta_request(group: str, transfer: bytes) -> dict[str, Any]:
    """The wire form of a `MetaRequest`."""
    return {"op": "meta", "group": group, "transfer": transfer}


def read_request(group: str, transfer: bytes, file: str, offset: int, size: int) -> dict[str, Any]:
    """The wire form of a `ReadRequest`."""
    return {
        "op": "read",
        "group": group,
        "transfer": transfer,
        "file": file,
        "offset": offset,
        "size": size,
    }


def end_request(group: str, transfer: bytes, ok: bool, reason: str) -> dict[str, Any]:
    """The wire form of an `EndRequest` (``reason`` cut to what the leader accepts)."""
    return {
        "op": "end",
        "group": group,
        "transfer": transfer,
        "ok": ok,
        "reason": reason[:_MAX_REASON],
    }


GroupHandler = Callable[[Request], Awaitable[Any]]
"""Serves one group's parsed requests (the node's snapshot runtime)."""


class SnapshotService:
    """The ``raft.snapshot`` service of one transport: routes each request to
    its group's handler. Use `attach` and `detach`; the service is registered
    on the transport while any group is attached."""

    _by_transport: ClassVar[weakref.WeakKeyDictionary[Transport, SnapshotService]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._groups: dict[str, GroupHandler] = {}

    @classmethod
    def attach(cls, transport: Transport, group: str, handler: GroupHandler) -> None:
        """Serve ``group``'s snapshot requests on ``transport`` with ``handler``."""
        service = cls._by_transport.get(transport)
        if service is None:
            service = cls._by_transport[transport] = cls(transport)
        if not service._groups:
            transport.register_service(SERVICE, service.handle, max_request_bytes=MAX_REQUEST_BYTES)
        service._groups[group] = handler

    @classmethod
    def detach(cls, transport: Transport, group: str) -> None:
        """Stop serving ``group`` (the service goes when its last group does)."""
        service = cls._by_transport.get(transport)
        if service is None or service._groups.pop(group, None) is None:
            return
        if not service._groups:
            transport.unregister_service(SERVICE)

    async def handle(self, obj: Any) -> Any:
        """Serve one request (the transport's service handler)."""
        req = parse_request(obj)
        handler = self._groups.get(req.group)
        if handler is None:
            raise SnapshotRequestError(f"no group {req.group!r:.80} here")
        return await handler(req)
