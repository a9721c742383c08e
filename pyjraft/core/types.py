"""Plain value types shared by the core, storage, transport and runtime.

`Entry` is a NamedTuple rather than a dataclass on purpose: the log holds
millions of them and builds one per proposal on the hot path, and tuple
construction is several times cheaper than a frozen dataclass ``__init__``.
Everything else here is a frozen, slotted dataclass.
"""

from __future__ import annotations

import enum
import operator
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from typing import NamedTuple

NodeId = str
"""A peer's identity inside a group; for real clusters its ``host:port``."""

GroupId = str
"""The name of a raft group; many groups may share one transport."""

NONE: NodeId = ""
"""The empty node id: no vote cast, no leader known."""


class EntryType(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """User data, handed to the state machine."""
    NOOP = 1
    """Appended by every new leader so it can commit entries of earlier terms."""
    CONFIG = 2
    """A membership configuration (see `ConfState`), encoded by the core."""


class Entry(NamedTuple):
    """One log entry. ``index`` starts at 1; ``term`` is the leader's term.

    ``type`` holds an `EntryType` value as a plain ``int`` (compare it with
    ``==``): entries are cached by the hundred thousand, and a reference to an
    enum member (a GC-tracked object) makes every full garbage collection walk
    them all, which cost the leader pauses of tens of milliseconds.
    """

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    type: int
    data: bytes

    @property
    def size(self) -> int:
        """Bytes this entry counts for against message and in-flight limits."""
        return len(self.data) + ENTRY_OVERHEAD


ENTRY_OVERHEAD = 16
"""Bytes an entry counts for beyond its data (see `Entry.size`)."""

_DATA = operator.itemgetter(3)


def entries_size(entries: Sequence[Entry]) -> int:
    """Total `Entry.size` of ``entries``, computed without a Python-level loop."""
    return sum(map(len, map(_DATA, entries))) + ENTRY_OVERHEAD * len(entries)


def count_within(entries: Sequence[Entry], max_bytes: int, used: int = 0) -> int:
    """How many leading ``entries`` fit in ``max_bytes`` when ``used`` bytes are taken.

    When nothing is taken yet (``used == 0``) at least one entry fits, so a
    single oversized entry still makes progress. No Python-level loop per entry.
    """
    count = len(entries)
    if not count:
        return 0
    # The common case, everything fits, is one C-level sum with no list.
    if used + sum(map(len, map(_DATA, entries))) + ENTRY_OVERHEAD * count <= max_bytes:
        return count
    sizes = map(operator.add, map(len, map(_DATA, entries)), repeat(ENTRY_OVERHEAD))
    n = bisect_right(list(accumulate(sizes, initial=used)), max_bytes) - 1
    if n <= 0:
        return 1 if used == 0 else 0
    return min(n, count)


class Role(enum.Enum):
    """A node's role in its group."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must be durable before messages that depend on it are sent."""

    term: int = 0
    vote: NodeId = NONE


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the runtime may want to observe: who leads, and our role."""

    leader: NodeId
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class ConfState:
    """A group's membership: voters, learners, and (during a joint change) the
    outgoing voters; ``priorities`` lists the voters whose election priority is
    not 1 (0: never leads; higher: preferred). See `pyjraft.core.conf`."""

    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    voters_outgoing: tuple[NodeId, ...] = field(default=())
    priorities: tuple[tuple[NodeId, int], ...] = ()


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What the core knows of a snapshot: the last index and term it includes,
    and the configuration at that index. The data itself is the runtime's."""

    index: int
    term: int
    conf: ConfState
