"""Hypothesis strategies for raft messages, shared by the transport tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from pyjraft.core.messages import (
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
from pyjraft.transport.codec import MAX_CONTEXT_LEN, MAX_ID_LEN, MAX_INT

ints = st.one_of(st.integers(0, 1000), st.integers(0, MAX_INT), st.just(MAX_INT))
ids = st.one_of(st.text(max_size=12), st.text(min_size=MAX_ID_LEN, max_size=MAX_ID_LEN))
small_ids = st.text(max_size=12)
contexts = st.one_of(st.binary(max_size=16), st.just(b"x" * MAX_CONTEXT_LEN))


@st.composite
def append_entries(draw: st.DrawFn) -> AppendEntries:
    """An AppendEntries whose entries are contiguous after ``prev_log_index``."""
    n = draw(st.integers(0, 8))
    prev = draw(st.integers(0, MAX_INT - n))
    types = st.sampled_from(list(EntryType))
    entries = tuple(
        Entry(draw(ints), prev + 1 + i, draw(types), draw(st.binary(max_size=32))) for i in range(n)
    )
    return AppendEntries(
        draw(small_ids),
        draw(ints),
        draw(ids),
        draw(small_ids),
        prev,
        draw(ints),
        entries,
        draw(ints),
    )


def _common() -> tuple[st.SearchStrategy[Any], ...]:
    return (small_ids, ints, ids, small_ids)


messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(PreVoteRequest, *_common(), ints, ints),
    st.builds(PreVoteResponse, *_common(), st.booleans()),
    st.builds(VoteRequest, *_common(), ints, ints, st.booleans()),
    st.builds(VoteResponse, *_common(), st.booleans()),
    append_entries(),
    st.builds(AppendEntriesResponse, *_common(), st.booleans(), ints, ints, ints),
    st.builds(Heartbeat, *_common(), ints, contexts),
    st.builds(HeartbeatResponse, *_common(), contexts),
    st.builds(TimeoutNow, *_common()),
)
"""Any valid raft message."""
