"""The KV wire format: requests, log entries, and the one validator both share.

Theory of operation
-------------------
A client sends the ``kv`` service a msgpack map, ``{"op": NAME, ...fields}``
(the fields of each op are listed in `REQUEST_FIELDS` and the README). Reads
(``get``, ``get_many``, ``scan``, ``watch``, ``status``) are answered from
the local store. A write is turned into a *command*, a msgpack array that
starts with the format version `FORMAT` and the op name::

    [1, "put", key, value]
    [1, "put_if_absent", key, value]
    [1, "cas", key, value, "value", expected_value_or_nil]
    [1, "cas", key, value, "mod_revision", expected_mod_revision]   # 0: absent
    [1, "delete", key]
    [1, "delete_range", start, end_or_nil, prev_kv]
    [1, "txn", [compare...], [op...], [op...]]
    [1, "compact", revision]
    [1, "barrier"]                   # no-op: the temporary read barrier

with a txn compare ``[key, target, op, operand]`` and a txn op one of
``["put", k, v]``, ``["delete", k]``, ``["delete_range", start, end, prev_kv]``,
``["get", k]``, ``["scan", start, end, limit, reverse, keys_only, max_bytes]``.

`check_command` validates a command; it is the only validator. The service
runs it with the configured `KvLimits` before proposing, so nothing reaches
the log that is malformed or too large; the state machine runs it again on
every entry it applies, with `HARD_LIMITS` (what the engine can store at
all), and answers an invalid entry with an error result instead of raising.
It must not use the configured limits there: a limit lowered between
restarts would make a replica refuse, on replay, an entry the others
applied. For the same reason everything a command's effect depends on is in
the command itself: a txn scan carries its limit and its byte budget,
filled in by the service from its configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from pyjraft.kv.types import prefix_end

FORMAT = 1
"""Version of the command format (the first element of every log entry)."""

LMDB_MAX_KEY_BYTES = 511
"""The longest key LMDB stores (its compile-time ``MDB_MAXKEYSIZE``)."""

READ_MODES = ("linearizable", "lease", "serializable")
"""The ``read`` option of read requests."""

COMPARE_TARGETS = ("value", "version", "create_revision", "mod_revision")
"""What a txn compare may look at."""
COMPARE_OPS = ("==", "!=", "<", ">")
"""How a txn compare may compare."""

_UINT64_MAX = (1 << 64) - 1


class InvalidRequest(ValueError):
    """A request or command that must not be proposed (or applied); the message says why."""


@dataclass(frozen=True, slots=True)
class KvLimits:
    """What the service accepts. Checked before proposing; see the module doc."""

    max_key_bytes: int = LMDB_MAX_KEY_BYTES
    """Longest key (and range bound); at most `LMDB_MAX_KEY_BYTES`."""
    max_value_bytes: int = 1 << 20
    """Largest value."""
    max_request_bytes: int = 2 << 20
    """Largest encoded command (a txn of many puts, say); keep it at most the
    node's ``max_entry_bytes``."""
    max_txn_ops: int = 128
    """Most compares, and most ops in each branch, of a transaction."""
    max_get_many: int = 1000
    """Most keys in one ``get_many``."""
    max_scan_limit: int = 10_000
    """Most key-values in one scan page (and the page size of ``limit`` 0)."""
    max_reply_bytes: int = 4 << 20
    """A scan, get_many or watch reply stops growing past this many bytes of
    keys and values (it always carries at least one)."""
    max_watch_events: int = 1000
    """Most events in one watch reply."""
    max_watch_wait_ms: int = 30_000
    """Longest a watch request waits for an event before answering empty."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_key_bytes <= LMDB_MAX_KEY_BYTES:
            raise ValueError(f"max_key_bytes must be in 1..{LMDB_MAX_KEY_BYTES}")
        for name in (
            "max_value_bytes",
            "max_request_bytes",
            "max_txn_ops",
            "max_get_many",
            "max_scan_limit",
            "max_reply_bytes",
            "max_watch_events",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_watch_wait_ms < 0:
            raise ValueError("max_watch_wait_ms must be >= 0")


HARD_LIMITS = KvLimits(
    max_value_bytes=_UINT64_MAX,
    max_request_bytes=_UINT64_MAX,
    max_txn_ops=_UINT64_MAX,
    max_get_many=_UINT64_MAX,
    max_scan_limit=_UINT64_MAX,
    max_reply_bytes=_UINT64_MAX,
    max_watch_events=_UINT64_MAX,
)
"""What the state machine checks each entry against: only what LMDB cannot store."""


# -- field checks ------------------------------------------------------------------


def _key(v: Any, limits: KvLimits, what: str = "key") -> bytes:
    if type(v) is not bytes:
        raise InvalidRequest(f"{what} must be bytes, got {type(v).__name__}")
    if not v:
        raise InvalidRequest(f"{what} must not be empty")
    if len(v) > limits.max_key_bytes:
        raise InvalidRequest(f"{what} of {len(v)} bytes exceeds {limits.max_key_bytes}")
    return v


def _value(v: Any, limits: KvLimits) -> bytes:
    if type(v) is not bytes:
        raise InvalidRequest(f"value must be bytes, got {type(v).__name__}")
    if len(v) > limits.max_value_bytes:
        raise InvalidRequest(f"value of {len(v)} bytes exceeds {limits.max_value_bytes}")
    return v


def _bound(v: Any, limits: KvLimits, what: str, *, nil_ok: bool, extra: int = 0) -> bytes | None:
    if v is None and nil_ok:
        return None
    if type(v) is not bytes:
        raise InvalidRequest(f"{what} must be bytes{' or nil' if nil_ok else ''}")
    if len(v) > limits.max_key_bytes + extra:
        raise InvalidRequest(f"{what} of {len(v)} bytes exceeds {limits.max_key_bytes + extra}")
    return v


def _range(start: Any, end: Any, limits: KvLimits, extra: int = 0) -> tuple[bytes, bytes | None]:
    s = _bound(start, limits, "start", nil_ok=False, extra=extra)
    e = _bound(end, limits, "end", nil_ok=True, extra=extra)
    assert s is not None
    return s, e


def _uint(v: Any, what: str, lo: int = 0, hi: int = _UINT64_MAX) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise InvalidRequest(f"{what} must be an integer in {lo}..{hi}, got {v!r:.40}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise InvalidRequest(f"{what} must be a boolean")
    return v


def _array(v: Any, what: str, n: int | None = None) -> Sequence[Any]:
    if type(v) not in (list, tuple):
        raise InvalidRequest(f"{what} must be an array")
    if n is not None and len(v) != n:
        raise InvalidRequest(f"{what} must have {n} elements, got {len(v)}")
    return v  # type: ignore[no-any-return]


# -- commands (the log form) -----------------------------------------------------------


def check_command(cmd: Any, limits: KvLimits) -> None:
    """Raise `InvalidRequest` unless ``cmd`` is a command the state machine can
    apply within ``limits`` (see the module doc for the forms)."""
    if type(cmd) not in (list, tuple) or len(cmd) < 2:
        raise InvalidRequest("a command is an array [format, op, ...]")
    if (  # the common case, checked at once (every replica checks every entry)
        len(cmd) == 4
        and cmd[1] == "put"
        and cmd[0] == FORMAT
        and type(cmd[0]) is int
        and type(cmd[2]) is bytes
        and 0 < len(cmd[2]) <= limits.max_key_bytes
        and type(cmd[3]) is bytes
        and len(cmd[3]) <= limits.max_value_bytes
    ):
        return
    if cmd[0] != FORMAT or type(cmd[0]) is not int:
        raise InvalidRequest(f"unknown command format {cmd[0]!r:.20}")
    op = cmd[1]
    if op in ("put", "put_if_absent"):
        _expect_len(cmd, 4)
        _key(cmd[2], limits)
        _value(cmd[3], limits)
    elif op == "cas":
        _expect_len(cmd, 6)
        _key(cmd[2], limits)
        _value(cmd[3], limits)
        if cmd[4] == "value":
            if cmd[5] is not None:
                _value(cmd[5], limits)
        elif cmd[4] == "mod_revision":
            _uint(cmd[5], "expected mod_revision")
        else:
            raise InvalidRequest("cas compares 'value' or 'mod_revision'")
    elif op == "delete":
        _expect_len(cmd, 3)
        _key(cmd[2], limits)
    elif op == "delete_range":
        _expect_len(cmd, 5)
        _range(cmd[2], cmd[3], limits)
        _bool(cmd[4], "prev_kv")
    elif op == "txn":
        _expect_len(cmd, 5)
        compares = _array(cmd[2], "compare")
        if len(compares) > limits.max_txn_ops:
            raise InvalidRequest(f"{len(compares)} compares exceed {limits.max_txn_ops}")
        for c in compares:
            _check_compare(c, limits)
        for branch, name in ((cmd[3], "success"), (cmd[4], "failure")):
            ops = _array(branch, name)
            if len(ops) > limits.max_txn_ops:
                raise InvalidRequest(f"{len(ops)} {name} ops exceed {limits.max_txn_ops}")
            for o in ops:
                _check_txn_op(o, limits)
    elif op == "compact":
        _expect_len(cmd, 3)
        _uint(cmd[2], "revision", lo=1)
    elif op == "barrier":
        _expect_len(cmd, 2)
    else:
        raise InvalidRequest(f"unknown command {op!r:.40}")


def _expect_len(cmd: Sequence[Any], n: int) -> None:
    if len(cmd) != n:
        raise InvalidRequest(f"{cmd[1]!r} command must have {n} elements, got {len(cmd)}")


def _check_compare(c: Any, limits: KvLimits) -> None:
    key, target, op, operand = _array(c, "a compare", 4)
    _key(key, limits)
    if target not in COMPARE_TARGETS or type(target) is not str:
        raise InvalidRequest(f"compare target must be one of {', '.join(COMPARE_TARGETS)}")
    if op not in COMPARE_OPS or type(op) is not str:
        raise InvalidRequest(f"compare op must be one of {' '.join(COMPARE_OPS)}")
    if target == "value":
        if operand is not None:
            _value(operand, limits)
    else:
        _uint(operand, f"{target} operand")


def _check_txn_op(o: Any, limits: KvLimits) -> None:
    o = _array(o, "a txn op")
    if not o:
        raise InvalidRequest("a txn op is an array [name, ...]")
    name = o[0]
    if name == "put":
        _array(o, "put", 3)
        _key(o[1], limits)
        _value(o[2], limits)
    elif name in ("delete", "get"):
        _array(o, name, 2)
        _key(o[1], limits)
    elif name == "delete_range":
        _array(o, "delete_range", 4)
        _range(o[1], o[2], limits)
        _bool(o[3], "prev_kv")
    elif name == "scan":
        _array(o, "scan", 7)
        _range(o[1], o[2], limits)
        _uint(o[3], "limit", lo=1, hi=limits.max_scan_limit)
        _bool(o[4], "reverse")
        _bool(o[5], "keys_only")
        _uint(o[6], "max_bytes", lo=1, hi=limits.max_reply_bytes)
    else:
        raise InvalidRequest(f"unknown txn op {name!r:.40}")


def pack_command(cmd: Sequence[Any]) -> bytes:
    """The log entry bytes of a command."""
    return msgpack.packb(cmd)  # type: ignore[no-any-return]


def unpack_command(data: bytes) -> Any:
    """Decode a log entry (any bytes: garbage raises `InvalidRequest`)."""
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except Exception as e:
        raise InvalidRequest(f"undecodable command: {e}") from None


BARRIER = pack_command((FORMAT, "barrier"))
"""The no-op command the temporary read barrier replicates."""


# -- requests (the client's form) ------------------------------------------------------

WRITE_OPS = frozenset({"put", "put_if_absent", "cas", "delete", "delete_range", "txn", "compact"})
"""Request ops that go through the log."""
READ_OPS = frozenset({"get", "get_many", "scan", "watch", "status"})
"""Request ops answered from the local store."""


REQUEST_FIELDS: dict[str, frozenset[str]] = {
    op: frozenset(("op", *fields))
    for op, fields in {
        "put": ("key", "value"),
        "put_if_absent": ("key", "value"),
        "cas": ("key", "value", "expect_value", "expect_mod_revision"),
        "delete": ("key",),
        "delete_range": ("start", "end", "prefix", "prev_kv"),
        "txn": ("compare", "success", "failure"),
        "compact": ("revision",),
        "get": ("key", "read"),
        "get_many": ("keys", "read"),
        "scan": ("start", "end", "prefix", "limit", "reverse", "keys_only", "read"),
        "watch": ("start", "end", "prefix", "start_revision", "start_sub", "max_events", "wait_ms"),
        "status": (),
    }.items()
}
"""The fields each request op may carry; any other field is refused (a field
the server ignored could widen what a request does, a range delete's above all)."""


def check_fields(req: Any) -> str:
    """The op of request ``req``, after checking it is a map with known fields."""
    if type(req) is not dict:
        raise InvalidRequest(f"a request is a map, got {type(req).__name__}")
    op = req.get("op")
    allowed = REQUEST_FIELDS.get(op) if type(op) is str else None
    if allowed is None:
        raise InvalidRequest(f"unknown op {op!r:.40}")
    for name in req:
        if name not in allowed:
            raise InvalidRequest(f"{op!r} has no field {name!r:.40}")
    return str(op)


def _req_range(req: dict[Any, Any], limits: KvLimits, extra: int = 0) -> tuple[bytes, bytes | None]:
    """A request's range: ``prefix``, or ``start`` (default b"") and ``end``
    (default nil: no upper bound)."""
    if "prefix" in req:
        if "start" in req or "end" in req:
            raise InvalidRequest("give either prefix or start/end, not both")
        prefix = _bound(req["prefix"], limits, "prefix", nil_ok=False, extra=extra)
        assert prefix is not None
        return prefix, prefix_end(prefix)
    return _range(req.get("start", b""), req.get("end"), limits, extra)


def _field(req: dict[Any, Any], name: str, default: Any = ...) -> Any:
    if name in req:
        return req[name]
    if default is ...:
        raise InvalidRequest(f"{req.get('op')!r} needs the field {name!r}")
    return default


def command_from_request(req: Any, limits: KvLimits) -> bytes:
    """The validated log entry for a write request; `InvalidRequest` if it has
    none (malformed, too large, unknown op)."""
    op = check_fields(req)
    if op in ("put", "put_if_absent"):
        cmd: tuple[Any, ...] = (FORMAT, op, _field(req, "key"), _field(req, "value"))
    elif op == "cas":
        has_value = "expect_value" in req
        has_rev = "expect_mod_revision" in req
        if has_value == has_rev:
            raise InvalidRequest("cas needs exactly one of expect_value, expect_mod_revision")
        if has_value:
            target, expected = "value", req["expect_value"]
        else:
            target, expected = "mod_revision", req["expect_mod_revision"]
        cmd = (FORMAT, op, _field(req, "key"), _field(req, "value"), target, expected)
    elif op == "delete":
        cmd = (FORMAT, op, _field(req, "key"))
    elif op == "delete_range":
        if "start" not in req and "prefix" not in req:
            raise InvalidRequest("delete_range needs start or prefix (b'' for every key)")
        start, end = _req_range(req, limits)
        cmd = (FORMAT, op, start, end, _field(req, "prev_kv", False))
    elif op == "txn":
        success = [_normalize_txn_op(o, limits) for o in _array(req.get("success", ()), "success")]
        failure = [_normalize_txn_op(o, limits) for o in _array(req.get("failure", ()), "failure")]
        cmd = (FORMAT, op, list(_array(req.get("compare", ()), "compare")), success, failure)
    elif op == "compact":
        cmd = (FORMAT, op, _field(req, "revision"))
    else:
        raise InvalidRequest(f"unknown op {op!r:.40}")
    check_command(cmd, limits)
    data = pack_command(cmd)
    if len(data) > limits.max_request_bytes:
        raise InvalidRequest(f"request of {len(data)} bytes exceeds {limits.max_request_bytes}")
    return data


def _normalize_txn_op(o: Any, limits: KvLimits) -> Any:
    """A txn scan from a client is ``["scan", start, end, limit, reverse, keys_only]``;
    its command form carries the effective limit and byte budget."""
    if type(o) in (list, tuple) and len(o) == 6 and o[0] == "scan":
        limit = o[3]
        if limit == 0 and type(limit) is int:
            limit = limits.max_scan_limit
        return ["scan", o[1], o[2], limit, o[4], o[5], limits.max_reply_bytes]
    return o


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A validated read: ``op`` and its arguments, normalized."""

    op: str
    read: str = "linearizable"
    key: bytes = b""
    keys: tuple[bytes, ...] = ()
    start: bytes = b""
    end: bytes | None = None
    limit: int = 0
    reverse: bool = False
    keys_only: bool = False
    start_revision: int = 0
    start_sub: int = 0
    wait_ms: int = 0


def read_from_request(req: Any, limits: KvLimits) -> ReadRequest:
    """The validated form of a read request; `InvalidRequest` if malformed."""
    op = check_fields(req)
    if op == "status":
        return ReadRequest("status", "serializable")
    if op == "watch":
        # A key watch is the range [key, key + b"\0"): one byte past the key limit.
        start, end = _req_range(req, limits, extra=1)
        return ReadRequest(
            "watch",
            "serializable",
            start=start,
            end=end,
            start_revision=_uint(req.get("start_revision", 0), "start_revision"),
            start_sub=_uint(req.get("start_sub", 0), "start_sub", hi=0xFFFFFFFF),
            limit=_uint(req.get("max_events", 0), "max_events", hi=limits.max_watch_events)
            or limits.max_watch_events,
            wait_ms=_uint(req.get("wait_ms", 0), "wait_ms", hi=limits.max_watch_wait_ms),
        )
    mode = req.get("read", "linearizable")
    if mode not in READ_MODES or type(mode) is not str:
        raise InvalidRequest(f"read must be one of {', '.join(READ_MODES)}")
    if op == "get":
        return ReadRequest("get", mode, key=_key(_field(req, "key"), limits))
    if op == "get_many":
        keys = _array(_field(req, "keys"), "keys")
        if len(keys) > limits.max_get_many:
            raise InvalidRequest(f"{len(keys)} keys exceed {limits.max_get_many}")
        return ReadRequest("get_many", mode, keys=tuple(_key(k, limits) for k in keys))
    if op == "scan":
        start, end = _req_range(req, limits)
        limit = _uint(req.get("limit", 0), "limit", hi=limits.max_scan_limit)
        return ReadRequest(
            "scan",
            mode,
            start=start,
            end=end,
            limit=limit or limits.max_scan_limit,
            reverse=_bool(req.get("reverse", False), "reverse"),
            keys_only=_bool(req.get("keys_only", False), "keys_only"),
        )
    raise InvalidRequest(f"unknown op {op!r:.40}")


__all__ = [
    "BARRIER",
    "COMPARE_OPS",
    "COMPARE_TARGETS",
    "FORMAT",
    "HARD_LIMITS",
    "LMDB_MAX_KEY_BYTES",
    "READ_MODES",
    "READ_OPS",
    "REQUEST_FIELDS",
    "WRITE_OPS",
    "InvalidRequest",
    "KvLimits",
    "ReadRequest",
    "check_command",
    "check_fields",
    "command_from_request",
    "pack_command",
    "read_from_request",
    "unpack_command",
]
