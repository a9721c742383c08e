"""Quorum arithmetic: majority commit index and vote tallies, simple and joint.

A joint configuration (old voters, new voters) needs a majority of *each*;
a simple configuration is a joint one whose outgoing half is empty, for which
every question answers as if it were not there.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from itertools import repeat

from pyjraft.core.types import NodeId


class VoteResult(enum.Enum):
    """The outcome of a vote tally so far."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """How many of ``n`` voters make a quorum."""
    return n // 2 + 1


def majority_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """The largest index that a majority of ``voters`` has in ``match``.

    An empty voter set commits anything, so it does not constrain a joint quorum.
    """
    if not voters:
        return 1 << 63
    acked = sorted(map(match.get, voters, repeat(0)), reverse=True)
    return acked[majority(len(voters)) - 1]


def joint_index(
    incoming: Collection[NodeId], outgoing: Collection[NodeId], match: Mapping[NodeId, int]
) -> int:
    """The commit index of a joint configuration: the smaller of the two majorities."""
    return min(majority_index(incoming, match), majority_index(outgoing, match))


def majority_vote(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Tally ``votes`` among ``voters``; votes of non-voters are ignored."""
    if not voters:
        return VoteResult.WON
    granted = rejected = 0
    for v in voters:
        answer = votes.get(v)
        if answer is True:
            granted += 1
        elif answer is False:
            rejected += 1
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def joint_vote(
    incoming: Collection[NodeId], outgoing: Collection[NodeId], votes: Mapping[NodeId, bool]
) -> VoteResult:
    """Tally a joint configuration: won only if both halves won, lost if either lost."""
    a = majority_vote(incoming, votes)
    b = majority_vote(outgoing, votes)
    if a is b:
        return a
    if VoteResult.LOST in (a, b):
        return VoteResult.LOST
    return VoteResult.PENDING
