"""The runtime's error family. Every error a caller of `Node.apply` can see.

All derive from `pyjraft.core.RaftError`; `NotLeaderError` is the core's own,
carrying the leader's address (``""`` when unknown).
"""

from __future__ import annotations

from pyjraft.core.errors import NotLeaderError, RaftError


class LeadershipLostError(RaftError):
    """This node stopped leading before the entry was applied here.

    The outcome is UNKNOWN: the entry may still be committed by the next
    leader. Retry only if the operation is idempotent, or read to find out.
    """


class OverloadedError(RaftError):
    """The proposal queue is full; nothing was proposed. Retry later.

    Load never puts the node into a permanent error state.
    """


class ShutdownError(RaftError):
    """The node is shut down (or shutting down); nothing was proposed."""


class StateMachineError(RaftError):
    """The state machine raised while applying; the node stopped applying and
    left the group (its replica state is unknown). See `StateMachine.on_error`."""


class ReadTimeoutError(RaftError):
    """A linearizable read was not confirmed in time (no quorum answered, or this
    node did not apply far enough). Nothing was read; retrying is safe."""


class NodeStorageError(RaftError):
    """Durable storage failed; the node stopped. The operation's outcome is unknown."""


class RegistrationError(RaftError):
    """The member's peers refused to record its data directory's instance
    (`pyjraft.node.registration`); it never took part. Fatal."""


class MemberDataLostError(RegistrationError):
    """This member's data directory is not the one its peers know: it was lost
    (wiped, replaced) since the member last ran, and the member refuses to
    take part. The message says how to recover (README: "A member that lost
    its data")."""


__all__ = [
    "LeadershipLostError",
    "MemberDataLostError",
    "NodeStorageError",
    "NotLeaderError",
    "OverloadedError",
    "RaftError",
    "ReadTimeoutError",
    "RegistrationError",
    "ShutdownError",
    "StateMachineError",
]
