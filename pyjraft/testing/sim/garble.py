"""A garbling peer: copies of real messages, broken so that no correct peer
could have sent them.

Raft assumes no Byzantine peers, and nothing here lies plausibly (a forged
acknowledgement of an index the sender does hold, or a heartbeat from the
real leader's id, cannot be told from the truth: authentication keeps those
out). What it sends instead is impossible on its face: a term beyond any
bound, a sender outside the group or the receiver itself, an acknowledgement
past anything ever written, entries out of order, a second leader in the
leader's own term, a timeout-now from a node that does not lead. The core
must drop each one (and say so in `Ready.bad_messages`), and the group must
go on as if it never arrived.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    TimeoutNow,
    VoteRequest,
)
from pyjraft.core.raft import RaftCore
from pyjraft.core.types import Entry, Role
from pyjraft.core.validate import MAX_TERM, MAX_TERM_JUMP


def garble(
    m: Message, rng: random.Random, core_of: Callable[[str], RaftCore | None]
) -> tuple[Message | None, bool]:
    """An impossible variant of ``m`` (None if none fits it), and whether the
    receiver must report it whatever its state (the others may also be dropped
    for an ordinary reason first, such as an older term)."""
    always: list[Callable[[], Message | None]] = [
        lambda: dataclasses.replace(m, term=MAX_TERM + 1 + rng.randrange(1 << 20)),
        lambda: _term_jump(m, core_of),
        lambda: dataclasses.replace(m, src="stranger"),
        lambda: dataclasses.replace(m, src=m.dst),
    ]
    if isinstance(m, AppendEntries) and m.entries:
        always.append(lambda: _future_term_entries(m))
    if isinstance(m, VoteRequest):
        always.append(lambda: dataclasses.replace(m, last_log_term=m.term + 1))
    sometimes: list[Callable[[], Message | None]] = [
        lambda: _second_leader(m, core_of),
        lambda: _timeout_now_from_follower(m, core_of),
    ]
    if isinstance(m, AppendEntriesResponse) and m.success:
        sometimes.append(lambda: dataclasses.replace(m, index=m.index + (1 << 50)))
    if rng.random() < 0.6:
        return rng.choice(always)(), True
    return rng.choice(sometimes)(), False


def _term_jump(m: Message, core_of: Callable[[str], RaftCore | None]) -> Message | None:
    dst = core_of(m.dst)
    if dst is None:
        return None
    return dataclasses.replace(m, term=dst.term + MAX_TERM_JUMP + 1)


def _future_term_entries(m: AppendEntries) -> Message:
    last = m.entries[-1]
    bad = Entry(m.term + 1, last.index + 1, last.type, last.data)
    return dataclasses.replace(m, entries=(*m.entries, bad))


def _second_leader(m: Message, core_of: Callable[[str], RaftCore | None]) -> Message | None:
    """A heartbeat, at the receiver's own term, sent to a leader by another member."""
    dst = core_of(m.dst)
    if dst is None or dst.role is not Role.LEADER or m.src == m.dst:
        return None
    return Heartbeat(m.group, dst.term, m.src, m.dst, 0)


def _timeout_now_from_follower(
    m: Message, core_of: Callable[[str], RaftCore | None]
) -> Message | None:
    """A timeout-now from a member that does not lead the receiver's term."""
    dst = core_of(m.dst)
    if dst is None or m.src in (dst.leader, m.dst):
        return None
    return TimeoutNow(m.group, dst.term, m.src, m.dst)
