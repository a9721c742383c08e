"""Codec and framing: round trips, rejection of each invalid field class, fuzzing."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyjraft.core.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    Heartbeat,
    Message,
    PreVoteResponse,
    VoteRequest,
)
from pyjraft.core.types import Entry, EntryType
from pyjraft.transport.codec import (
    MAX_CONTEXT_LEN,
    MAX_ID_LEN,
    MAX_INT,
    EntriesCache,
    decode_messages,
    decode_request,
    decode_response,
    encode_message,
    encode_message_parts,
    encode_messages,
    encode_request,
    encode_response,
    new_packer,
    raft_body,
    split_request,
)
from pyjraft.transport.errors import ProtocolError
from pyjraft.transport.framing import (
    HEADER,
    VERSION,
    FrameDecoder,
    Kind,
    encode_frame,
    parse_header,
)

from .strategies import messages

# derandomize: the same examples every run, so a failure reproduces exactly.
DET = settings(deadline=None, derandomize=True)
FUZZ = settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def ae(entries: tuple[Entry, ...] = (), prev: int = 10) -> AppendEntries:
    return AppendEntries("g1", 3, "a:1", "b:2", prev, 2, entries, 9)


def ents(n: int, first: int = 11) -> tuple[Entry, ...]:
    return tuple(Entry(3, first + i, EntryType.NORMAL, b"d%d" % i) for i in range(n))


# -- round trips ------------------------------------------------------------


@given(st.lists(messages, max_size=6))
@DET
def test_round_trip_batch(msgs: list[Message]) -> None:
    body = encode_messages(msgs)
    out = decode_messages(body)
    assert out == msgs
    assert [type(m) for m in out] == [type(m) for m in msgs]
    # the incremental form produces identical bytes
    assert raft_body([encode_message(m) for m in msgs]) == body
    # and so do the pieces (with a cache of their own: these random messages
    # do not come from one log, so they may not share one)
    packer = new_packer()
    for m in msgs:
        assert b"".join(encode_message_parts(m, packer)) == encode_message(m)
        assert b"".join(encode_message_parts(m, packer, {})) == encode_message(m)


def test_entries_packed_once_for_every_follower() -> None:
    packer = new_packer()
    cache: EntriesCache = {}
    batch = ents(50)
    to_b = AppendEntries("g", 3, "a:1", "b:1", 10, 3, batch, 9)
    to_c = AppendEntries("g", 3, "a:1", "c:1", 10, 3, tuple(batch), 7)
    pb = encode_message_parts(to_b, packer, cache)
    pc = encode_message_parts(to_c, packer, cache)
    assert pb[1] is pc[1], "the second follower's entries come from the cache"
    assert len(cache) == 1
    assert decode_messages(raft_body([b"".join(pb), b"".join(pc)])) == [to_b, to_c]
    # Different entries (another term at the same indexes) are packed afresh.
    other = AppendEntries("g", 4, "a:1", "c:1", 10, 3, tuple(e._replace(term=4) for e in batch), 7)
    po = encode_message_parts(other, packer, cache)
    assert po[1] is not pb[1]
    assert decode_messages(raft_body([b"".join(po)])) == [other]
    # So are the same indexes and terms of another group's log.
    elsewhere = AppendEntries("h", 3, "a:1", "c:1", 10, 3, batch, 7)
    assert encode_message_parts(elsewhere, packer, cache)[1] is not pb[1]


@given(messages)
@DET
def test_round_trip_each_kind_keeps_exact_types(msg: Message) -> None:
    (out,) = decode_messages(encode_messages([msg]))
    assert out == msg
    if isinstance(out, AppendEntries):
        for e in out.entries:
            assert type(e) is Entry
            assert type(e.type) is int  # plain ints keep cached entries cheap to GC
            assert type(e.data) is bytes


def test_every_message_type_is_covered() -> None:
    seen: set[type] = set()

    @given(messages)
    @settings(max_examples=400, deadline=None, derandomize=True)
    def collect(m: Message) -> None:
        seen.add(type(m))

    collect()
    assert seen == set(MESSAGE_TYPES)


def test_round_trip_large_batch_many_groups() -> None:
    msgs: list[Message] = [ae(ents(1000)), *(Heartbeat(f"g{i}", 1, "a", "b", i) for i in range(50))]
    assert decode_messages(encode_messages(msgs)) == msgs


def test_encode_rejects_non_message() -> None:
    with pytest.raises(TypeError):
        encode_messages([object()])  # type: ignore[list-item]


# -- rejection of invalid fields ---------------------------------------------


def row(msg: Message) -> list[Any]:
    """The raw wire array of ``msg``, as lists so tests can mutate it."""
    (r,) = msgpack.unpackb(encode_messages([msg]), raw=False)
    return list(r)


def rejects(rows: Any) -> str:
    with pytest.raises(ProtocolError) as info:
        decode_messages(pack(rows))
    return info.value.reason


VR = VoteRequest("g", 5, "a", "b", 7, 4, True)
BAD_INTS: list[Any] = [-1, MAX_INT + 1, 2**64 - 1, True, False, 1.0, "1", b"1", None, [1]]
BAD_IDS: list[Any] = ["x" * (MAX_ID_LEN + 1), b"g", 1, None, True, ["g"]]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("pos", [1, 3, 4])  # group, src, dst
def test_rejects_bad_id(pos: int, bad: Any) -> None:
    r = row(VR)
    r[pos] = bad
    rejects([r])


@pytest.mark.parametrize("bad", BAD_INTS)
@pytest.mark.parametrize("pos", [2, 5, 6])  # term, last_log_index, last_log_term
def test_rejects_bad_int(pos: int, bad: Any) -> None:
    r = row(VR)
    r[pos] = bad
    rejects([r])


@pytest.mark.parametrize("bad", [1, 0, None, "true", b"\x01", 1.0])
def test_rejects_non_bool_for_bool(bad: Any) -> None:
    r = row(VR)
    r[7] = bad
    rejects([r])
    r = row(PreVoteResponse("g", 1, "a", "b", True))
    r[5] = bad
    rejects([r])


@pytest.mark.parametrize("bad", ["ctx", None, 5, b"x" * (MAX_CONTEXT_LEN + 1), [b"x"]])
def test_rejects_bad_bytes(bad: Any) -> None:
    r = row(Heartbeat("g", 1, "a", "b", 3, b"ok"))
    r[6] = bad
    rejects([r])


@pytest.mark.parametrize("tag", [-1, len(MESSAGE_TYPES), 255, 2**40, True, "0", None, 1.0])
def test_rejects_unknown_tag(tag: Any) -> None:
    r = row(VR)
    r[0] = tag
    rejects([r])


def test_rejects_wrong_array_lengths() -> None:
    r = row(VR)
    rejects([[*r, 1]])
    rejects([r[:-1]])
    rejects([[]])
    rejects([{"tag": 1}])
    rejects(r)  # a message where a batch is expected
    rejects({"a": 1})
    rejects(5)


def test_rejects_trailing_bytes_and_bad_utf8() -> None:
    with pytest.raises(ProtocolError):
        decode_messages(encode_messages([VR]) + b"\x00")
    body = bytearray(encode_messages([VoteRequest("gg", 5, "a", "b", 7, 4)]))
    i = body.index(b"gg")
    body[i] = 0xFF
    with pytest.raises(ProtocolError):
        decode_messages(bytes(body))


# Mutations of the columnar entries field ``[term_runs, types, datas]`` of an
# AppendEntries with three entries of term 3 starting at index 11.
ENTRY_MUTATIONS: list[tuple[str, Any]] = [
    ("runs", [-1, 3]),  # negative term
    ("runs", [MAX_INT + 1, 3]),
    ("runs", [True, 3]),  # bool is not int
    ("runs", [3, 2]),  # covers too few entries
    ("runs", [3, 4]),  # covers too many
    ("runs", [3, 0, 3, 3]),  # empty run
    ("runs", [3, -1, 3, 4]),
    ("runs", [3, True, 3, 2]),
    ("runs", [3]),  # odd length
    ("runs", ["3", 3]),
    ("types", b"\x00\x03\x00"),  # unknown entry type
    ("types", b"\x00\x00"),  # one type short
    ("types", [0, 0, 0]),  # an array, not bin
    ("types", "\x00\x00\x00"),
    ("datas", [b"a", "b", b"c"]),  # str is not bytes
    ("datas", [b"a", None, b"c"]),
    ("datas", [b"a", 1, b"c"]),
    ("datas", [b"a", b"b"]),  # one entry short
    ("datas", b"abc"),
]


@pytest.mark.parametrize(("column", "bad"), ENTRY_MUTATIONS)
def test_rejects_bad_entry_column(column: str, bad: Any) -> None:
    r = row(ae(ents(3)))
    runs, types, datas = r[7]
    cols = {"runs": runs, "types": types, "datas": datas}
    cols[column] = bad
    r[7] = [cols["runs"], cols["types"], cols["datas"]]
    rejects([r])


def test_rejects_bad_entry_shapes() -> None:
    for bad_entries in (
        [[3, 1], b"\x00"],
        [[3, 1], b"\x00", [b""], 1],
        [5],
        [b"x"],
        {"e": 1},
        b"entries",
    ):
        r = row(ae(ents(1)))
        r[7] = bad_entries
        rejects([r])
    r = row(ae())
    r[7] = [[3, 1], b"", []]  # runs without entries
    rejects([r])


def test_columns_carry_runs_of_terms() -> None:
    entries = (
        Entry(2, 11, EntryType.NORMAL, b"a"),
        Entry(2, 12, EntryType.NOOP, b""),
        Entry(5, 13, EntryType.NORMAL, b"c"),
    )
    r = row(ae(entries))
    assert list(r[7][0]) == [2, 2, 5, 1]
    assert r[7][1] == b"\x00\x01\x00"
    (out,) = decode_messages(encode_messages([ae(entries)]))
    assert isinstance(out, AppendEntries)
    assert out.entries == entries


def test_entry_index_overflow_rejected() -> None:
    r = row(ae(prev=MAX_INT))
    r[7] = [[1, 1], b"\x00", [b""]]
    rejects([r])


def test_rejects_maps_and_ext_in_raft_body() -> None:
    r = row(VR)
    r[1] = {"g": 1}
    rejects([r])
    ext = msgpack.packb([msgpack.ExtType(1, b"x")])
    with pytest.raises(ProtocolError):
        decode_messages(ext)


# -- RPC envelopes -----------------------------------------------------------


@given(
    st.integers(0, MAX_INT),
    st.text(max_size=MAX_ID_LEN),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=10,
    ),
)
@DET
def test_request_response_round_trip(rpc_id: int, service: str, obj: Any) -> None:
    assert decode_request(encode_request(rpc_id, service, obj)) == (rpc_id, service, obj)
    assert decode_response(encode_response(rpc_id, True, obj)) == (rpc_id, True, obj)
    assert decode_response(encode_response(rpc_id, False, "boom")) == (rpc_id, False, "boom")


def test_request_allows_int_map_keys() -> None:
    assert decode_request(encode_request(1, "s", {1: "a"}))[2] == {1: "a"}


@pytest.mark.parametrize(
    "body",
    [
        [1, "svc"],
        [-1, "svc", None],
        [True, "svc", None],
        [1, b"svc", None],
        [1, "s" * (MAX_ID_LEN + 1), None],
        {"id": 1},
    ],
)
def test_request_rejects(body: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_request(pack(body))


@pytest.mark.parametrize(
    "body", [[1, 2, None], [1, True, None], [1, 1, 5], [1, 1, b"err"], [1, 0], "x"]
)
def test_response_rejects(body: Any) -> None:
    with pytest.raises(ProtocolError):
        decode_response(pack(body))


def test_unhashable_map_key_is_protocol_error() -> None:
    body = b"\x93\x01\xa1s\x81\x91\x01\x02"  # [1, "s", {[1]: 2}]
    with pytest.raises(ProtocolError):
        decode_request(body)


# -- framing -----------------------------------------------------------------


def test_frame_round_trip_and_split_feeding() -> None:
    frames = [
        encode_frame(Kind.RAFT, encode_messages([VR])),
        encode_frame(Kind.REQUEST, b""),
        encode_frame(Kind.RESPONSE, b"xyz"),
    ]
    stream = b"".join(frames)
    dec = FrameDecoder()
    got = []
    for i in range(len(stream)):  # one byte at a time
        got += dec.feed(stream[i : i + 1])
    dec.eof()
    assert got == [(Kind.RAFT, encode_messages([VR])), (Kind.REQUEST, b""), (Kind.RESPONSE, b"xyz")]


@pytest.mark.parametrize(
    ("header", "word"),
    [
        (HEADER.pack(1, VERSION, Kind.RAFT), "minimum"),
        (HEADER.pack(1025, VERSION, Kind.RAFT), "maximum"),
        (HEADER.pack(2**32 - 1, VERSION, Kind.RAFT), "maximum"),
        (HEADER.pack(10, VERSION + 1, Kind.RAFT), "version"),
        (HEADER.pack(10, 0, Kind.RAFT), "version"),
        (HEADER.pack(10, VERSION, 0), "kind"),
        (HEADER.pack(10, VERSION, 99), "kind"),
    ],
)
def test_header_rejections(header: bytes, word: str) -> None:
    with pytest.raises(ProtocolError, match=word):
        parse_header(header, 1024)
    dec = FrameDecoder(1024)
    with pytest.raises(ProtocolError):
        dec.feed(header)
    with pytest.raises(ProtocolError):  # poisoned for good
        dec.feed(b"")


def test_truncated_stream_detected() -> None:
    dec = FrameDecoder()
    assert dec.feed(encode_frame(Kind.RAFT, b"\x90")[:-1]) == []
    with pytest.raises(ProtocolError, match="inside a frame"):
        dec.eof()


# -- fuzzing: nothing but ProtocolError ---------------------------------------


def decode_stream(data: bytes) -> list[Any]:
    """The receive pipeline without sockets: frames, then bodies by kind."""
    out: list[Any] = []
    dec = FrameDecoder(1 << 20)
    for kind, body in dec.feed(data):
        if kind is Kind.RAFT:
            out.append(decode_messages(body))
        elif kind is Kind.REQUEST:
            out.append(decode_request(body))
        else:
            out.append(decode_response(body))
    dec.eof()
    return out


@given(st.binary(max_size=512))
@FUZZ
def test_random_bytes_only_protocol_error(data: bytes) -> None:
    for fn in (decode_messages, decode_request, decode_response, decode_stream):
        with contextlib.suppress(ProtocolError):
            fn(data)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    msgs = draw(st.lists(messages, min_size=1, max_size=3))
    kind = draw(st.sampled_from(list(Kind)))
    if kind is Kind.RAFT:
        body = encode_messages(msgs)
    elif kind is Kind.REQUEST:
        body = encode_request(draw(st.integers(0, 99)), "svc", [1, b"x", {"k": "v"}])
    else:
        body = encode_response(draw(st.integers(0, 99)), draw(st.booleans()), "text")
    data = bytearray(encode_frame(kind, body))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and data:
            del data[i]
        elif op == "truncate":
            del data[i:]
    return bytes(data)


@given(mutated_frames())
@FUZZ
def test_mutated_frames_only_protocol_error(data: bytes) -> None:
    try:
        decoded = decode_stream(data)
    except ProtocolError:
        return
    # Whatever survived mutation must be valid: re-encoding round trips.
    for item in decoded:
        if isinstance(item, list):
            assert decode_messages(encode_messages(item)) == item


@given(st.lists(messages, min_size=1, max_size=3), st.data())
@FUZZ
def test_mutated_raft_bodies_only_protocol_error(msgs: list[Message], data: st.DataObject) -> None:
    body = bytearray(encode_messages(msgs))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode_messages(bytes(body))


@pytest.mark.parametrize("rpc_id", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, 2**63 - 1])
@pytest.mark.parametrize("service", ["s", "x" * 31, "y" * 32, "z" * 255, "\u00e9" * 200])
def test_split_request_reads_the_head_msgpack_wrote(rpc_id: int, service: str) -> None:
    body = encode_request(rpc_id, service, [1, {"a": b"b"}])
    got_id, got_service, off = split_request(body)
    assert (got_id, got_service) == (rpc_id, service)
    assert msgpack.unpackb(body[off:]) == [1, {"a": b"b"}]
    assert decode_request(body) == (rpc_id, service, [1, {"a": b"b"}])


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x92\x01\xa1s",  # 2 elements
        b"\x93\xff\xa1s\xc0",  # negative id
        b"\x93\xcf\x80" + b"\x00" * 7 + b"\xa1s\xc0",  # id >= 2**63
        b"\x93\xcd\x01",  # truncated id
        b"\x93\x01\x05\xc0",  # service not a string
        b"\x93\x01\xa3ab",  # truncated service
        b"\x93\x01\xa1s",  # no payload
        b"\x93\x01\xa2\xff\xfe\xc0",  # service not UTF-8
        b"\x93\x01\xdb\x00\x01\x00\x00" + b"s" * 65536 + b"\xc0",  # service too long
    ],
)
def test_split_request_rejects(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        split_request(body)
