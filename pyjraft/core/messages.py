"""Raft messages: one frozen, slotted dataclass per kind.

Every message names its raft ``group``, its sender ``src``, its receiver
``dst`` and the sender's ``term``. The transport encodes them field by field
(`pyjraft.transport.codec`); adding a field means bumping the wire version.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyjraft.core.types import Entry, GroupId, NodeId


@dataclass(frozen=True, slots=True)
class PreVoteRequest:
    """Raft thesis 9.6: 'would you vote for me in ``term``?' without bumping any term.

    ``term`` is the term the sender would campaign in (its own term + 1).
    """

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    last_log_index: int
    last_log_term: int


@dataclass(frozen=True, slots=True)
class PreVoteResponse:
    """Answer to a `PreVoteRequest`; ``term`` echoes the request's term when granted."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    granted: bool


@dataclass(frozen=True, slots=True)
class VoteRequest:
    """RequestVote (paper section 5.2). ``transfer`` marks a leadership transfer,
    which overrides the receiver's leader lease."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    last_log_index: int
    last_log_term: int
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class VoteResponse:
    """Answer to a `VoteRequest`."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    granted: bool


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """AppendEntries (paper section 5.3) with the leader's commit index."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Answer to `AppendEntries`.

    On success ``index`` is the last index now known to match the leader's log.
    On rejection ``index`` is the rejected ``prev_log_index`` and the hint names
    where the leader should probe next: ``hint_index`` is the largest index
    at or below it whose term on the follower is ``hint_term``, which lets the
    leader skip a whole conflicting term per round trip.
    """

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    success: bool
    index: int
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness. ``commit`` is never past what the follower is known to
    match; ``context`` carries a ReadIndex round's id (empty when none)."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    commit: int
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    """Answer to a `Heartbeat`, echoing its ``context``."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId
    context: bytes = b""


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the leader tells a caught-up peer to campaign at once."""

    group: GroupId
    term: int
    src: NodeId
    dst: NodeId


Message = (
    PreVoteRequest
    | PreVoteResponse
    | VoteRequest
    | VoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | TimeoutNow
)
"""Any raft message."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    PreVoteRequest,
    PreVoteResponse,
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    TimeoutNow,
)
"""Every message kind, in wire-tag order (the codec's tag is the position here)."""
