"""The wire codec: raft messages and RPC envelopes to msgpack bodies and back.

Theory of operation
-------------------
A RAFT frame's body is one msgpack array of messages. Each message is a
compact positional array ``[tag, group, term, src, dst, *fields]`` where
``tag`` is the message class's position in `MESSAGE_TYPES` and ``fields``
follow the per-kind schema in ``_SCHEMA`` (field names are never sent).
An AppendEntries' entries travel as three columns,
``[term_runs, types, datas]``: ``term_runs`` is a flat array ``[term, count,
term, count, ...]`` (a log's terms come in long runs, usually one per
message), ``types`` is a bin with one byte per entry, ``datas`` an array of
bins; each index is implied by ``prev_log_index``. Both directions then work
per message, not per entry, in Python: the columns are built and checked
with C-level ``map``/``bytes``/``set`` calls and the `Entry` tuples are made
by ``map(tuple.__new__, ...)``, with no Python-level loop per entry.

Messages can be packed one at a time (`encode_message`) and the pieces later
concatenated behind one array header (`raft_body`): the TCP transport encodes
at `send` time, accounts queue memory in exact bytes, and its writer only
joins. `encode_messages` is the one-shot form of the same bytes.

Decoding trusts nothing. msgpack runs with tight ``max_*_len`` limits (no map
or ext is ever valid in a raft body, strings are short), then every field is
checked for its exact type (``bool`` is not ``int``, ``bytes`` is ``bytes``),
range (``0..2**63-1``) and size, arrays for their exact length, tags and
entry types for validity, and AppendEntries for contiguous entry indexes
starting at ``prev_log_index + 1``. Any failure, including any exception
from msgpack itself, becomes one `ProtocolError`; decoding arbitrary bytes
raises nothing else. Adding a field to a message means updating ``_SCHEMA``
(the import-time check below fails until then) and bumping
`pyjraft.transport.framing.VERSION`.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from pyjraft.core.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    Message,
    PreVoteRequest,
    PreVoteResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from pyjraft.core.types import Entry, EntryType
from pyjraft.transport.errors import ProtocolError

MAX_INT: Final = 2**63 - 1
"""Largest integer accepted for any term, index or id."""

MAX_ID_LEN: Final = 255
"""Longest group id, node id or service name accepted, in characters."""

MAX_CONTEXT_LEN: Final = 64 * 1024
"""Largest heartbeat ``context`` accepted, in bytes."""

MAX_ERROR_TEXT: Final = 64 * 1024
"""Longest RPC error text sent or accepted; longer texts are truncated when sent."""

STATUS_OK: Final = 0
"""RPC response status: the body is the handler's result."""
STATUS_ERROR: Final = 1
"""RPC response status: the body is the handler's error text."""

# Field kinds of the schema.
_INT, _BOOL, _BYTES, _ENTRIES = range(4)
_COMMON = ("group", "term", "src", "dst")

_SCHEMA: dict[type[Message], tuple[tuple[str, int], ...]] = {
    PreVoteRequest: (("last_log_index", _INT), ("last_log_term", _INT)),
    PreVoteResponse: (("granted", _BOOL),),
    VoteRequest: (("last_log_index", _INT), ("last_log_term", _INT), ("transfer", _BOOL)),
    VoteResponse: (("granted", _BOOL),),
    AppendEntries: (
        ("prev_log_index", _INT),
        ("prev_log_term", _INT),
        ("entries", _ENTRIES),
        ("commit", _INT),
    ),
    AppendEntriesResponse: (
        ("success", _BOOL),
        ("index", _INT),
        ("hint_index", _INT),
        ("hint_term", _INT),
    ),
    Heartbeat: (("commit", _INT), ("context", _BYTES)),
    HeartbeatResponse: (("context", _BYTES),),
    TimeoutNow: (),
}


def _check_schema() -> None:
    # A field added to a message without a codec update would otherwise be
    # silently lost on the wire; fail loudly at import instead.
    for cls in MESSAGE_TYPES:
        names = tuple(f.name for f in dataclasses.fields(cls))
        want = _COMMON + tuple(name for name, _ in _SCHEMA[cls])
        if names != want:
            raise RuntimeError(f"codec schema for {cls.__name__} is {want}, class has {names}")
    if set(_SCHEMA) != set(MESSAGE_TYPES):
        raise RuntimeError("codec schema and MESSAGE_TYPES disagree")


_check_schema()

# type -> (tag, getter returning every field as a tuple, in wire order)
_ENCODE: dict[type[Message], tuple[int, Callable[[Message], tuple[Any, ...]]]] = {
    cls: (
        tag,
        operator.attrgetter(*(_COMMON + tuple(n for n, _ in _SCHEMA[cls]))),
    )
    for tag, cls in enumerate(MESSAGE_TYPES)
}


class _Spec:
    __slots__ = ("cls", "kinds", "length", "prev_pos")

    def __init__(self, cls: type[Message]) -> None:
        self.cls = cls
        self.kinds = tuple(k for _, k in _SCHEMA[cls])
        self.length = 1 + len(_COMMON) + len(self.kinds)
        names = [n for n, _ in _SCHEMA[cls]]
        # Position (in the decoded value list) of prev_log_index, for the
        # contiguity check of entries; -1 when the kind carries no entries.
        self.prev_pos = (
            len(_COMMON) + names.index("prev_log_index") if _ENTRIES in self.kinds else -1
        )


_SPECS: tuple[_Spec, ...] = tuple(_Spec(cls) for cls in MESSAGE_TYPES)
_ETYPES: tuple[EntryType, ...] = tuple(sorted(EntryType))
_MAX_ETYPE = len(_ETYPES) - 1
if tuple(int(t) for t in _ETYPES) != tuple(range(len(_ETYPES))):  # pragma: no cover
    raise RuntimeError("EntryType values must be 0..n-1 for the codec's lookup table")

_RAFT_MAX_STR = MAX_ID_LEN * 4  # UTF-8 bytes of the longest id


def new_packer() -> msgpack.Packer:
    """A packer configured the way the codec writes (bin type for bytes)."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


_TERM = operator.itemgetter(0)
_TYPE = operator.itemgetter(2)
_DATA = operator.itemgetter(3)
_AE_ENTRIES_POS = 1 + len(_COMMON) + 2  # position of ``entries`` in an AppendEntries row


def _entry_columns(entries: Sequence[Entry]) -> tuple[list[int], bytes, list[bytes]]:
    if not entries:
        return [], b"", []
    terms = list(map(_TERM, entries))
    first = terms[0]
    if terms.count(first) == len(terms):
        runs = [first, len(terms)]
    else:
        runs = []
        for term, group in itertools.groupby(terms):
            runs += (term, sum(1 for _ in group))
    return runs, bytes(map(_TYPE, entries)), list(map(_DATA, entries))


def _row(msg: Message) -> tuple[Any, ...]:
    try:
        tag, getter = _ENCODE[type(msg)]
    except KeyError:
        raise TypeError(f"not a raft message: {type(msg).__name__}") from None
    row = (tag, *getter(msg))
    if type(msg) is AppendEntries:
        p = _AE_ENTRIES_POS
        row = (*row[:p], _entry_columns(msg.entries), *row[p + 1 :])
    return row


EntriesCache = dict[tuple[str, int, int, int, int, int], bytes]
"""Packed entry columns by (group, first index, first term, last index, last
term, count): see `encode_message_parts`."""


def encode_message_parts(
    msg: Message, packer: msgpack.Packer, cache: EntriesCache | None = None
) -> list[bytes]:
    """`encode_message` as pieces to be written one after the other.

    An AppendEntries with entries comes as three pieces, the middle one its
    packed entries, taken from ``cache`` when the same entries were packed
    for another follower: by the Log Matching property the same first and
    last (index, term) and count mean the same entries. A leader replicating
    a batch to every follower thus packs (and copies) its data once, not
    once per follower, and the data is never copied into a message buffer.
    """
    if type(msg) is not AppendEntries or not msg.entries:
        return [packer.pack(_row(msg))]
    entries = msg.entries
    first = entries[0]
    last = entries[-1]
    key = (msg.group, first.index, first.term, last.index, last.term, len(entries))
    packed = cache.get(key) if cache is not None else None
    if packed is None:
        packed = packer.pack(_entry_columns(entries))
        if cache is not None:
            cache[key] = packed
    tag, getter = _ENCODE[AppendEntries]
    row = (tag, *getter(msg))
    p = _AE_ENTRIES_POS
    # msgpack is a stream: an array header, then its elements one by one.
    head = packer.pack_array_header(len(row)) + b"".join(map(packer.pack, row[:p]))
    tail = b"".join(map(packer.pack, row[p + 1 :]))
    return [head, packed, tail]


def encode_message(msg: Message, packer: msgpack.Packer | None = None) -> bytes:
    """Pack one message as an element of a RAFT body (see `raft_body`).

    The encoder does not validate: it trusts our own core. Whatever it
    produces that is out of range is rejected by the receiver.
    """
    return (packer or new_packer()).pack(_row(msg))  # type: ignore[no-any-return]


def raft_body(packed: Sequence[bytes], packer: msgpack.Packer | None = None) -> bytes:
    """Join messages packed by `encode_message` into one RAFT body."""
    return (packer or new_packer()).pack_array_header(len(packed)) + b"".join(packed)  # type: ignore[no-any-return]


def encode_messages(msgs: Iterable[Message]) -> bytes:
    """Encode a batch of raft messages (any groups, any kinds) as a RAFT body."""
    return new_packer().pack([_row(m) for m in msgs])  # type: ignore[no-any-return]


def _malformed(e: Exception) -> ProtocolError:
    # msgpack raises a zoo of types; callers see one.
    return ProtocolError(f"malformed msgpack: {type(e).__name__}: {e}")


# msgpack.unpackb is called directly, keywords spelled out, on the hot paths:
# passing them through a ``**kwargs`` dict costs about 0.9 us per call (more
# than the unpacking of a small frame). Its max_*_len limits default to the
# length of the input, which is what bounds a hostile length prefix.


def _bad_int(v: object) -> bool:
    return type(v) is not int or not 0 <= v <= MAX_INT


def _bad_id(v: object) -> bool:
    return type(v) is not str or len(v) > MAX_ID_LEN


def _decode_entries(raw: object, first_index: int) -> tuple[Entry, ...]:
    if type(raw) is not tuple or len(raw) != 3:
        raise ProtocolError("entries: expected [term_runs, types, datas]")
    runs, types, datas = raw
    if type(runs) is not tuple or len(runs) % 2:
        raise ProtocolError("entries: term runs must be an even-length array")
    if type(types) is not bytes:
        raise ProtocolError(f"entries: types must be bin, got {type(types).__name__}")
    if type(datas) is not tuple:
        raise ProtocolError(f"entries: datas must be an array, got {type(datas).__name__}")
    n = len(datas)
    if len(types) != n:
        raise ProtocolError(f"entries: {len(types)} types for {n} entries")
    if n == 0:
        if runs:
            raise ProtocolError("entries: term runs without entries")
        return ()
    terms: list[int] = []
    total = 0
    for i in range(0, len(runs), 2):
        term, count = runs[i], runs[i + 1]
        if type(term) is not int or not 0 <= term <= MAX_INT:
            raise ProtocolError(f"entry term: invalid {term!r:.80}")
        if type(count) is not int or not 0 < count <= n - total:
            raise ProtocolError(f"entries: invalid run length {count!r:.80}")
        total += count
        terms += [term] * count
    if total != n:
        raise ProtocolError(f"entries: term runs cover {total} of {n} entries")
    if max(types) > _MAX_ETYPE:
        raise ProtocolError(f"entry type: invalid {max(types)}")
    if set(map(type, datas)) != {bytes}:
        raise ProtocolError("entry data: expected bytes")
    if first_index + n - 1 > MAX_INT:
        raise ProtocolError("entry index: out of range")
    # tuple.__new__ through map: Entry tuples built in C, no NamedTuple __new__.
    return tuple(
        map(
            tuple.__new__,
            itertools.repeat(Entry, n),
            zip(
                terms,
                range(first_index, first_index + n),
                types,  # iterating bytes yields plain ints, as `Entry` wants
                datas,
                strict=True,
            ),
        )
    )


def _ok_ids(group: object, src: object, dst: object) -> bool:
    return (
        type(group) is str
        and type(src) is str
        and type(dst) is str
        and len(group) <= MAX_ID_LEN
        and len(src) <= MAX_ID_LEN
        and len(dst) <= MAX_ID_LEN
    )


def _ok_ints(*values: object) -> bool:
    # A loop, not all() over a generator: half the cost for 4 values.
    for v in values:  # noqa: SIM110
        if type(v) is not int or not 0 <= v <= MAX_INT:
            return False
    return True


# The two messages of every write, checked field by field without the generic
# loop; anything that fails a check is decoded again by that loop, which
# names the bad field.
_AE_TAG = MESSAGE_TYPES.index(AppendEntries)
_AER_TAG = MESSAGE_TYPES.index(AppendEntriesResponse)


def _decode_hot(raw: tuple[Any, ...]) -> Message | None:
    tag = raw[0]
    if tag == _AER_TAG and len(raw) == 9 and type(tag) is int:
        _, group, term, src, dst, success, index, hint_index, hint_term = raw
        if (
            _ok_ids(group, src, dst)
            and type(success) is bool
            and _ok_ints(term, index, hint_index, hint_term)
        ):
            return AppendEntriesResponse(
                group, term, src, dst, success, index, hint_index, hint_term
            )
    elif tag == _AE_TAG and len(raw) == 9 and type(tag) is int:
        _, group, term, src, dst, prev, prev_term, entries, commit = raw
        if _ok_ids(group, src, dst) and _ok_ints(term, prev, prev_term, commit):
            return AppendEntries(
                group, term, src, dst, prev, prev_term, _decode_entries(entries, prev + 1), commit
            )
    return None


def _decode_one(raw: object) -> Message:
    if type(raw) is tuple and raw:
        hot = _decode_hot(raw)
        if hot is not None:
            return hot
    if type(raw) is not tuple or not raw:
        raise ProtocolError(f"message: expected a non-empty array, got {type(raw).__name__}")
    tag = raw[0]
    if type(tag) is not int or not 0 <= tag < len(_SPECS):
        raise ProtocolError(f"message: unknown tag {tag!r}")
    spec = _SPECS[tag]
    name = spec.cls.__name__
    if len(raw) != spec.length:
        raise ProtocolError(f"{name}: expected {spec.length} fields, got {len(raw)}")
    group, term, src, dst = raw[1:5]
    if _bad_id(group):
        raise ProtocolError(f"{name}.group: invalid {group!r:.80}")
    if _bad_int(term):
        raise ProtocolError(f"{name}.term: invalid {term!r}")
    if _bad_id(src):
        raise ProtocolError(f"{name}.src: invalid {src!r:.80}")
    if _bad_id(dst):
        raise ProtocolError(f"{name}.dst: invalid {dst!r:.80}")
    values: list[Any] = list(raw[1:5])
    for i, kind in enumerate(spec.kinds):
        v = raw[5 + i]
        if kind == _INT:
            if _bad_int(v):
                raise ProtocolError(f"{name} field {i + 4}: invalid integer {v!r:.80}")
        elif kind == _BOOL:
            if type(v) is not bool:
                raise ProtocolError(f"{name} field {i + 4}: expected bool, got {type(v).__name__}")
        elif kind == _BYTES:
            if type(v) is not bytes or len(v) > MAX_CONTEXT_LEN:
                raise ProtocolError(f"{name} field {i + 4}: expected bytes <= {MAX_CONTEXT_LEN}")
        else:
            v = _decode_entries(v, values[spec.prev_pos] + 1)
        values.append(v)
    return spec.cls(*values)


def decode_messages(body: bytes | memoryview) -> list[Message]:
    """Decode a RAFT body; raise `ProtocolError` (only) if anything is invalid.

    msgpack's limits follow from the body's length and what a RAFT body may
    hold: no map and no ext at all, strings no longer than an id, and no
    array longer than half the body (every array a valid body holds has
    elements of 2 bytes or more on average: messages, entry datas, term
    runs), so a body of tiny elements is refused before anything is built.
    """
    n = len(body)
    try:
        raw = msgpack.unpackb(
            body,
            raw=False,
            max_str_len=_RAFT_MAX_STR,
            max_bin_len=n,
            max_array_len=(n >> 1) + 16,
            max_map_len=0,
            max_ext_len=0,
            use_list=False,  # tuples unpack about twice as fast as lists
        )
    except Exception as e:
        raise _malformed(e) from None
    if type(raw) is not tuple:
        raise ProtocolError(f"raft body: expected an array, got {type(raw).__name__}")
    return [_decode_one(m) for m in raw]


# -- RPC envelopes ---------------------------------------------------------


def encode_request(rpc_id: int, service: str, request: Any) -> bytes:
    """Encode a REQUEST body. Raises `TypeError`/`ValueError` if ``request``
    is not msgpack-able (the caller's bug, not the network's)."""
    return new_packer().pack((rpc_id, service, request))  # type: ignore[no-any-return]


def encode_response(rpc_id: int, ok: bool, payload: Any) -> bytes:
    """Encode a RESPONSE body: ``payload`` is the result when ``ok``, else the
    error text (truncated to `MAX_ERROR_TEXT`). Raises `TypeError`/`ValueError`
    for an unencodable result."""
    if not ok:
        payload = str(payload)[:MAX_ERROR_TEXT]
    return new_packer().pack((rpc_id, STATUS_OK if ok else STATUS_ERROR, payload))  # type: ignore[no-any-return]


MAX_REQUEST_HEAD: Final = 1 + 9 + 5 + MAX_ID_LEN * 4
"""Most bytes a REQUEST body can take before its payload: the array header,
the rpc id and the service name (see `split_request`)."""

_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}


def split_request(body: bytes | bytearray | memoryview) -> tuple[int, str, int]:
    """Read a REQUEST body's head: ``(rpc_id, service, payload_offset)``.

    The head is parsed by hand, before any of the payload is decoded, so
    that the service -- and so the request size it accepts -- is known
    first. ``body`` may be only the first `MAX_REQUEST_HEAD` bytes (or
    more) of a body still arriving. Raises `ProtocolError` for anything but
    ``[uint rpc_id, str service, payload]``.
    """
    n = len(body)
    if n < 3 or body[0] != 0x93:
        raise ProtocolError("request: expected an array of 3")
    b = body[1]
    pos = 2
    if b <= 0x7F:
        rpc_id = b
    elif b in _UINT:
        size = _UINT[b]
        if n < pos + size:
            raise ProtocolError("request: truncated rpc id")
        rpc_id = int.from_bytes(body[pos : pos + size], "big")
        pos += size
    else:
        raise ProtocolError(f"request: invalid rpc id (msgpack type byte {b:#x})")
    if rpc_id > MAX_INT:
        raise ProtocolError(f"request: invalid rpc id {rpc_id}")
    if pos >= n:
        raise ProtocolError("request: truncated service name")
    b = body[pos]
    pos += 1
    if 0xA0 <= b <= 0xBF:
        length = b - 0xA0
    elif b in _STR:
        size = _STR[b]
        if n < pos + size:
            raise ProtocolError("request: truncated service name")
        length = int.from_bytes(body[pos : pos + size], "big")
        pos += size
    else:
        raise ProtocolError(f"request: invalid service name (msgpack type byte {b:#x})")
    if length > MAX_ID_LEN * 4 or n < pos + length:
        raise ProtocolError("request: invalid service name")
    try:
        service = bytes(body[pos : pos + length]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("request: service name is not UTF-8") from None
    if len(service) > MAX_ID_LEN:
        raise ProtocolError(f"request: invalid service name {service!r:.80}")
    pos += length
    if pos >= n:
        raise ProtocolError("request: no payload")
    return rpc_id, service, pos


def decode_payload(payload: bytes | memoryview) -> Any:
    """Decode a request or response payload (a user's msgpack value) with
    limits from its length: no string, bin, ext or array longer than the
    payload, no map with more entries than half of it, exactly one value.
    A payload's decoded size can still be several times its encoded size
    (an empty list is 1 byte on the wire, 56 in memory): the services'
    ``max_request_bytes`` is what bounds it."""
    try:
        # String, bin, ext and array limits: the length (unpackb's default).
        return msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,  # user payloads may use non-string keys
            max_map_len=len(payload) >> 1,
        )
    except Exception as e:
        # An unhashable map key fails inside msgpack too.
        raise _malformed(e) from None


def decode_request(body: bytes | memoryview) -> tuple[int, str, Any]:
    """Decode a whole REQUEST body into ``(rpc_id, service, request)``: for
    a body no larger than any service's request limit (the transport's fast
    path: one msgpack call, no Python parsing of the head); others go
    through `split_request` first. msgpack's string, bin, ext and array
    limits are the body's length (its default for ``unpackb``), its map
    limit half of it."""
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=False, max_map_len=len(body) >> 1)
    except Exception as e:
        raise _malformed(e) from None
    if type(raw) is list and len(raw) == 3:
        rpc_id, service, request = raw
        if (
            type(rpc_id) is int
            and 0 <= rpc_id <= MAX_INT
            and type(service) is str
            and len(service) <= MAX_ID_LEN
        ):
            return rpc_id, service, request
        if _bad_int(rpc_id):
            raise ProtocolError(f"request: invalid rpc id {rpc_id!r:.80}")
        raise ProtocolError(f"request: invalid service name {service!r:.80}")
    raise ProtocolError("request: expected an array of 3")


def decode_response(body: bytes | memoryview) -> tuple[int, bool, Any]:
    """Decode a RESPONSE body into ``(rpc_id, ok, result_or_error_text)``,
    with the limits of `decode_payload`."""
    try:
        raw = msgpack.unpackb(body, raw=False, strict_map_key=False, max_map_len=len(body) >> 1)
    except Exception as e:
        raise _malformed(e) from None
    if type(raw) is not list or len(raw) != 3:
        raise ProtocolError("response: expected an array of 3")
    rpc_id, status, payload = raw
    if _bad_int(rpc_id):
        raise ProtocolError(f"response: invalid rpc id {rpc_id!r:.80}")
    if type(status) is not int or status not in (STATUS_OK, STATUS_ERROR):
        raise ProtocolError(f"response: invalid status {status!r:.80}")
    if status == STATUS_ERROR and (type(payload) is not str or len(payload) > MAX_ERROR_TEXT):
        raise ProtocolError("response: error text must be a string <= MAX_ERROR_TEXT")
    return rpc_id, status == STATUS_OK, payload
