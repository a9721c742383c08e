"""What no correct peer could send: structural checks of one message.

The core treats such a message as bad (dropped, reported in `Ready.bad_messages`
for the runtime to log), never as a reason to stop: only the node's own
storage or state machine may stop it. Checks that need the receiver's state
(membership, a second leader in a term, an acknowledgement beyond what was
sent) live in `pyjraft.core.raft`; the ones here need only the message.

Terms are bounded well below the wire format's 64-bit integers, and a jump
far past the receiver's term is refused: one garbled or forged term must
not push a group to a term it can never campaign past.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from pyjraft.core import conf
from pyjraft.core.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    Message,
    PreVoteRequest,
    VoteRequest,
)
from pyjraft.core.types import EntryType

MAX_TERM = 1 << 48
"""No term may exceed this (at one election a millisecond, 8,900 years)."""

MAX_TERM_JUMP = 1 << 32
"""A message may carry at most this many terms more than the receiver's.
Even a node partitioned for years without pre-vote, campaigning every
election timeout, stays far below it."""

MAX_INDEX = 1 << 62
"""No log index may exceed this."""

_ENTRY_TYPES = frozenset(int(t) for t in EntryType)
_TERM = operator.itemgetter(0)
_INDEX = operator.itemgetter(1)
_TYPE = operator.itemgetter(2)
_CONFIG = int(EntryType.CONFIG)


@dataclass(frozen=True, slots=True)
class BadMessage:
    """A message the core dropped because no correct peer could have sent it."""

    message: Message
    reason: str

    def __str__(self) -> str:
        m = self.message
        return f"bad {type(m).__name__} from {m.src!r} (term {m.term}): {self.reason}"


def problem(m: Message, our_term: int) -> str | None:
    """Why ``m`` is impossible for a correct peer to send, or None if it is not."""
    if not 0 <= m.term <= MAX_TERM:
        return f"term {m.term} is outside 0..{MAX_TERM}"
    if m.term > our_term + MAX_TERM_JUMP:
        return f"term {m.term} jumps more than {MAX_TERM_JUMP} past ours ({our_term})"
    match m:
        case AppendEntries():
            return _append_problem(m)
        case AppendEntriesResponse():
            if not 0 <= m.index <= MAX_INDEX or not 0 <= m.hint_index <= MAX_INDEX:
                return "index out of range"
            if not m.success and (m.hint_index > m.index or m.hint_term > m.term):
                return f"rejection hint {m.hint_index}/{m.hint_term} is past what it rejects"
        case Heartbeat():
            if not 0 <= m.commit <= MAX_INDEX:
                return f"commit {m.commit} out of range"
        case VoteRequest() | PreVoteRequest():
            if not 0 <= m.last_log_index <= MAX_INDEX:
                return "last log index out of range"
            if m.last_log_term > m.term or m.last_log_term < 0:
                return f"last log term {m.last_log_term} is past the campaign's term {m.term}"
            if (m.last_log_index == 0) != (m.last_log_term == 0):
                return "last log index and term disagree about an empty log"
    return None


def _append_problem(m: AppendEntries) -> str | None:
    if not 0 <= m.prev_log_index <= MAX_INDEX or not 0 <= m.commit <= MAX_INDEX:
        return "index out of range"
    if not 0 <= m.prev_log_term <= m.term:
        return f"previous entry's term {m.prev_log_term} is past the leader's term {m.term}"
    if (m.prev_log_index == 0) != (m.prev_log_term == 0):
        return "previous index and term disagree about an empty log"
    entries = m.entries
    if not entries:
        return None
    # C-level passes, not a Python loop per entry: this runs on every append.
    n = len(entries)
    first = m.prev_log_index + 1
    if entries[0].index != first or entries[-1].index != first + n - 1:
        return f"entries {entries[0].index}..{entries[-1].index} do not follow {first - 1}"
    if n > 2 and list(map(_INDEX, entries)) != list(range(first, first + n)):
        return "entry indexes are not contiguous"
    terms = list(map(_TERM, entries))
    if terms[0] < m.prev_log_term or terms[-1] > m.term or (n > 1 and terms != sorted(terms)):
        return f"entry terms {terms[0]}..{terms[-1]} are out of order (leader's term {m.term})"
    types = set(map(_TYPE, entries))
    if not _ENTRY_TYPES.issuperset(types):
        return "an entry has an unknown type"
    if _CONFIG in types:
        for e in entries:
            if e.type == _CONFIG:
                try:
                    conf.decode(e.data)
                except ValueError as exc:
                    return f"entry {e.index}: {exc}"
    return None
