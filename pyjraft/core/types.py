"""Plain value types shared by the core, storage, transport and runtime.

`Entry` is a NamedTuple rather than a dataclass on purpose: the log holds
millions of them and builds one per proposal on the hot path, and tuple
construction is several times cheaper than a frozen dataclass ``__init__``.
Everything else here is a frozen, slotted dataclass.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
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
    """One log entry. ``index`` starts at 1; ``term`` is the leader's term."""

    term: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose
    type: EntryType
    data: bytes

    @property
    def size(self) -> int:
        """Bytes this entry counts for against message and in-flight limits."""
        return len(self.data) + 16


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
    """A group's membership: voters, learners, and (during a joint change) old voters."""

    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...] = ()
    voters_outgoing: tuple[NodeId, ...] = field(default=())
