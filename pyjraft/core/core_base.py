"""What every part of `pyjraft.core.raft.RaftCore` shares: its fields, and
the few methods one part calls in another.

`RaftCore` is assembled from parts, one module each: `pyjraft.core.election`
(terms, votes, pre-votes), `pyjraft.core.replication` (appends, heartbeats,
commit, snapshots to send) and `pyjraft.core.raft` (inputs, `Ready`, roles).
This base declares what they share, so each part type-checks alone.
"""

from __future__ import annotations

import random

from pyjraft.core.config import CoreConfig
from pyjraft.core.messages import Message
from pyjraft.core.progress import Progress
from pyjraft.core.raft_log import RaftLog
from pyjraft.core.read_only import ReadOnly, ReadState
from pyjraft.core.types import GroupId, NodeId, Role, SnapshotMeta


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
    voters: tuple[NodeId, ...]
    learners: tuple[NodeId, ...]
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
        """Whether this member may become leader (it is a voter)."""
        return self.id in self.voters

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
