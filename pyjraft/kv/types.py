"""The values `pyjraft.kv` hands to its users: key-values, events, results, txn parts.

Revisions follow etcd: the store has one revision, bumped by every write
that changes something (a transaction bumps it once, however many keys it
touches); each key carries the revision that created it, the revision that
last modified it and its version (1 on creation, +1 per modification; a
deleted key is gone, and a new put starts again at version 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

CompareTarget = Literal["value", "version", "create_revision", "mod_revision"]
"""What a `Compare` looks at."""
CompareOp = Literal["==", "!=", "<", ">"]
"""How a `Compare` compares."""
ReadConsistency = Literal["linearizable", "lease", "serializable"]
"""How a read is served: ``linearizable`` (ReadIndex: the default), ``lease``
(the leader's lease, no round trip; assumes bounded clock drift), or
``serializable`` (the contacted node's local state, possibly stale)."""
EventType = Literal["put", "delete"]
"""What a watch `Event` reports."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key, its value and its revisions."""

    key: bytes
    value: bytes
    """The value (``b""`` when read with ``keys_only``)."""
    create_revision: int
    """The store revision at which the key was (last) created."""
    mod_revision: int
    """The store revision of the key's last modification."""
    version: int
    """Modifications since creation: 1 after the creating put."""

    @classmethod
    def from_wire(cls, w: Any) -> KeyValue:
        """Decode the wire form ``[key, value, create_revision, mod_revision, version]``."""
        return cls(bytes(w[0]), bytes(w[1]), int(w[2]), int(w[3]), int(w[4]))


def kv_or_none(w: Any) -> KeyValue | None:
    """`KeyValue.from_wire`, passing None through."""
    return None if w is None else KeyValue.from_wire(w)


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by a watch: a put (``kv`` is the new key-value) or a
    delete (``kv`` has the key, an empty value, and the deleting revision as
    ``mod_revision``)."""

    type: EventType
    kv: KeyValue

    @property
    def revision(self) -> int:
        """The store revision of the change."""
        return self.kv.mod_revision

    @classmethod
    def from_wire(cls, w: Any) -> Event:
        """Decode ``[type, key, value, create_revision, mod_revision, version]``
        (type 0 = put, 1 = delete)."""
        kind: EventType = "put" if w[0] == 0 else "delete"
        return cls(kind, KeyValue(bytes(w[1]), bytes(w[2]), int(w[3]), int(w[4]), int(w[5])))


@dataclass(frozen=True, slots=True)
class PutResult:
    """A put's outcome: the store revision it made, and the previous key-value."""

    revision: int
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class CasResult:
    """A conditional write's outcome (put-if-absent, compare-and-set).

    ``prev`` is the key-value as it was before the operation: on failure, the
    current one (None if absent), so a caller can retry against it.
    ``revision`` is the store revision after the operation.
    """

    succeeded: bool
    revision: int
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """A single-key delete's outcome; ``prev`` is what was deleted."""

    deleted: bool
    revision: int
    prev: KeyValue | None


@dataclass(frozen=True, slots=True)
class DeleteRangeResult:
    """A range delete's outcome: how many keys, and (with ``prev_kv``) which."""

    deleted: int
    revision: int
    prev_kvs: list[KeyValue]


@dataclass(frozen=True, slots=True)
class GetManyResult:
    """Several keys read at one revision: one entry per key asked (None if absent)."""

    kvs: list[KeyValue | None]
    revision: int


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One page of a scan, read at ``revision``; ``more`` says it was cut short
    (by the limit or the reply size budget)."""

    kvs: list[KeyValue]
    more: bool
    revision: int


@dataclass(frozen=True, slots=True)
class CompactResult:
    """After `compact`: the store revision and the revision history now starts at."""

    revision: int
    compact_revision: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """A transaction's outcome: whether every compare held (so the success ops
    ran, else the failure ops), the store revision after it, and one result per
    op that ran: a `PutResult`, `DeleteResult`, `DeleteRangeResult`,
    `KeyValue | None` (get) or `ScanResult` (scan) -- each with the txn's revision."""

    succeeded: bool
    revision: int
    results: list[Any]


@dataclass(frozen=True, slots=True)
class Compare:
    """One condition of a transaction: ``target`` of ``key`` ``op`` ``operand``.

    An absent key has value None and version, create and mod revision 0:
    ``Compare(k, "value", "==", None)`` holds iff ``k`` is absent, and a value
    compared with ``<``/``>`` never holds for an absent key.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    operand: bytes | int | None

    def to_wire(self) -> list[Any]:
        """``[key, target, op, operand]``."""
        return [self.key, self.target, self.op, self.operand]


@dataclass(frozen=True, slots=True)
class Op:
    """One operation of a transaction; build with the class methods."""

    wire: tuple[Any, ...]

    @classmethod
    def put(cls, key: bytes, value: bytes) -> Op:
        """Set ``key`` to ``value``."""
        return cls(("put", key, value))

    @classmethod
    def delete(cls, key: bytes) -> Op:
        """Delete ``key``."""
        return cls(("delete", key))

    @classmethod
    def delete_range(
        cls,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        prev_kv: bool = False,
    ) -> Op:
        """Delete ``[start, end)`` (``end`` None: to the last key) or every key
        starting with ``prefix``."""
        start, end = key_range(start, end, prefix)
        return cls(("delete_range", start, end, prev_kv))

    @classmethod
    def get(cls, key: bytes) -> Op:
        """Read ``key`` (inside the transaction, after the ops before it)."""
        return cls(("get", key))

    @classmethod
    def scan(
        cls,
        start: bytes = b"",
        end: bytes | None = None,
        *,
        prefix: bytes | None = None,
        limit: int = 0,
        reverse: bool = False,
        keys_only: bool = False,
    ) -> Op:
        """Read a range (see `pyjraft.kv.Client.scan`); ``limit`` 0 is the
        server's page size."""
        start, end = key_range(start, end, prefix)
        return cls(("scan", start, end, limit, reverse, keys_only))


def prefix_end(prefix: bytes) -> bytes | None:
    """The first key after every key starting with ``prefix`` (None: no such key,
    the prefix is empty or all 0xff)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


def key_range(start: bytes, end: bytes | None, prefix: bytes | None) -> tuple[bytes, bytes | None]:
    """``(start, end)`` of a range given as ``[start, end)`` or as a prefix."""
    if prefix is None:
        return start, end
    if start or end is not None:
        raise ValueError("give either prefix or start/end, not both")
    return prefix, prefix_end(prefix)


__all__ = [
    "CasResult",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "CompactResult",
    "DeleteRangeResult",
    "DeleteResult",
    "Event",
    "EventType",
    "GetManyResult",
    "KeyValue",
    "Op",
    "PutResult",
    "ReadConsistency",
    "ScanResult",
    "TxnResult",
    "key_range",
    "kv_or_none",
    "prefix_end",
]
