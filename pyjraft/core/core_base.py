"""What every part of `pyjraft.core.raft.RaftCore` shares: its fields, and
the few methods one part calls in another.

`RaftCore` is assembled from parts, one module each: `pyjraft.core.election`
(terms, votes, pre-votes), `pyjraft.core.replication` (appends, heartbeats,
commit, snapshots to send) and `pyjraft.core.raft` (inputs, `Ready`, roles).
This base declares what they share, so each part type-checks alone.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from pyjraft.core import quorum
from pyjraft.core.config import CoreConfig
from pyjraft.core.messages import Message
from pyjraft.core.progress import Progress
from pyjraft.core.raft_log import RaftLog
from pyjraft.core.read_only import ReadOnly, ReadState
from pyjraft.core.types import ConfState, Entry, GroupId, NodeId, Role, SnapshotMeta


class CoreBase:
    """Fields and cross-part methods of a raft core (see the module docstring)."""

    config: CoreConfig
    id: NodeId
    group: GroupId
    log: RaftLog
    term: int
    vote: NodeId
    leader: NodeId
    role: Role
    conf: ConfState
    """The latest configuration in the log (committed or not): the one in force."""
    voters: tuple[NodeId, ...]
    """Its voters (the incoming ones, during a joint change)."""
    outgoing: tuple[NodeId, ...]
    """The outgoing voters of a joint change (empty otherwise)."""
    learners: tuple[NodeId, ...]
    _members: frozenset[NodeId]
    progress: dict[NodeId, Progress]
    votes: dict[NodeId, bool]
    election_elapsed: int
    heartbeat_elapsed: int
    randomized_election_ticks: int
    _rng: random.Random
    _stable_index: int
    _snapshot: SnapshotMeta | None
    _snapshot_sends: list[tuple[NodeId, SnapshotMeta]]
    ticks: int
    read_only: ReadOnly
    _read_states: list[ReadState]

    @property
    def promotable(self) -> bool:
        """Whether this member may become leader (it votes, incoming or outgoing)."""
        return self.id in self.voters or self.id in self.outgoing

    def _all_voters(self) -> tuple[NodeId, ...]:
        if not self.outgoing:
            return self.voters
        return (*self.voters, *(v for v in self.outgoing if v not in self.voters))

    def _vote_result(self, votes: dict[NodeId, bool]) -> quorum.VoteResult:
        """A tally of ``votes`` in the configuration in force (joint: both halves)."""
        return quorum.joint_vote(self.voters, self.outgoing, votes)

    def _quorum_index(self, match: Mapping[NodeId, int]) -> int:
        """The highest index a quorum of the configuration in force has."""
        return quorum.joint_index(self.voters, self.outgoing, match)

    def _send(self, m: Message) -> None:
        raise NotImplementedError

    def _reject(self, m: Message, reason: str) -> None:
        raise NotImplementedError

    def _become_follower(self, term: int, leader: NodeId) -> None:
        raise NotImplementedError

    def _become_pre_candidate(self) -> None:
        raise NotImplementedError

    def _become_candidate(self) -> None:
        raise NotImplementedError

    def _become_leader(self) -> None:
        raise NotImplementedError

    def _send_append(self, peer: NodeId, send_if_empty: bool = True) -> bool:
        raise NotImplementedError

    def _broadcast_append(self) -> None:
        raise NotImplementedError

    # Implemented by one part, called by another (the parts' MRO puts these last).

    def _commit_advanced(self) -> None:
        raise NotImplementedError

    def _tick_membership(self) -> None:
        raise NotImplementedError

    def _confs_appended(self, entries: list[Entry]) -> None:
        raise NotImplementedError

    def _maybe_send_timeout_now(self) -> None:
        raise NotImplementedError

    def _may_campaign(self) -> bool:
        raise NotImplementedError

    def _leader_heard(self) -> None:
        raise NotImplementedError

    def _hand_over_to_priority(self) -> None:
        raise NotImplementedError
