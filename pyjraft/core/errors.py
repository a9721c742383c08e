"""Errors the core raises for local misuse; the runtime translates them."""

from __future__ import annotations

from pyjraft.core.types import NONE, NodeId


class RaftError(Exception):
    """Base of every pyjraft error."""


class NotLeaderError(RaftError):
    """This node is not the leader. ``leader`` is the known leader, or ``""``."""

    def __init__(self, leader: NodeId = NONE, message: str | None = None) -> None:
        self.leader = leader
        super().__init__(
            message
            or (f"not leader; leader is {leader}" if leader else "not leader; leader unknown")
        )


class ProposalDroppedError(RaftError):
    """The core refused a proposal for a reason other than leadership
    (for example a leadership transfer in progress)."""


class ConfigError(RaftError, ValueError):
    """An invalid option or configuration."""


class ConfChangeBusyError(RaftError):
    """A configuration change is already in progress (one at a time)."""
