"""`encode_batch` of a single entry takes a short path; it must write exactly
the bytes (and report exactly the runs and sizes) of the general path, and
leave everything it cannot vouch for to the general path's checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyjraft.core.types import Entry, EntryType
from pyjraft.storage import record
from pyjraft.storage.record import (
    SegmentKey,
    _encode_many,
    _encode_one,
    decode_batches,
    encode_batch,
)

U64 = 2**64 - 1
KEY = SegmentKey(0x0123456789ABCDEF)
AT = 32  # the offset the batches are bound to


@given(
    term=st.integers(0, U64),
    index=st.integers(1, U64),
    etype=st.sampled_from([int(t) for t in EntryType]),
    data=st.binary(max_size=300),
    last_term=st.one_of(st.just(-1), st.integers(0, U64)),
)
def test_one_entry_matches_the_general_path(
    term: int, index: int, etype: int, data: bytes, last_term: int
) -> None:
    e = Entry(term, index, etype, data)
    fast = _encode_one(e, index, last_term, KEY.tag, KEY.seed(AT))
    assert fast is not None
    slow = _encode_many([e], index, last_term, KEY.tag, KEY.seed(AT))
    assert fast.buf == slow.buf
    assert fast.lengths == slow.lengths
    assert fast.run_starts == slow.run_starts
    assert fast.run_terms == slow.run_terms
    assert fast.entry_bytes == slow.entry_bytes
    assert list(fast.entries) == list(slow.entries)
    assert encode_batch([e], index, last_term, KEY, AT).buf == slow.buf


def test_one_entry_decodes_back() -> None:
    e = Entry(7, 41, int(EntryType.NORMAL), b"payload")
    enc = encode_batch([e], 41, 6, KEY, AT)
    assert list(decode_batches(bytes(enc.buf), "seg", AT, 41, 1, KEY).entries) == [e]


@pytest.mark.parametrize(
    "entry",
    [
        Entry(1, 5, int(EntryType.NORMAL), b"x"),  # wrong first index (5 vs 4)
        Entry(-1, 4, int(EntryType.NORMAL), b"x"),  # negative term
        Entry(U64 + 1, 4, int(EntryType.NORMAL), b"x"),  # term beyond u64
        Entry(1, 4, 99, b"x"),  # unknown type
    ],
)
def test_bad_single_entries_are_refused_as_before(entry: Entry) -> None:
    assert _encode_one(entry, 4, -1, KEY.tag, KEY.seed(AT)) is None
    with pytest.raises(ValueError):
        encode_batch([entry], 4, -1, KEY, AT)


def test_non_plain_single_entries_take_the_general_path() -> None:
    # An IntEnum type and a bytearray payload: the general path copies them into
    # plain, immutable fields for the cache.
    e = Entry(1, 4, EntryType.NORMAL, bytearray(b"abc"))  # type: ignore[arg-type]
    assert _encode_one(e, 4, -1, KEY.tag, KEY.seed(AT)) is None
    enc = encode_batch([e], 4, -1, KEY, AT)
    (got,) = enc.entries
    assert type(got.data) is bytes and type(got.type) is int
    plain = record._encode_many([Entry(1, 4, 0, b"abc")], 4, -1, KEY.tag, KEY.seed(AT))
    assert plain.buf == enc.buf
