"""`NodeInfo`: the read-only surface of a `Node` (who, what role, which term,
how far applied), mixed into `Node`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyjraft.core.types import Role

if TYPE_CHECKING:
    from pyjraft.core.raft import RaftCore
    from pyjraft.node.fsm_caller import FSMCaller
    from pyjraft.node.options import NodeOptions


class NodeInfo:
    """`Node`'s read-only properties."""

    options: NodeOptions
    _core: RaftCore
    _fsm: FSMCaller

    @property
    def id(self) -> str:
        """This member's address."""
        return self.options.id

    @property
    def group(self) -> str:
        """The raft group."""
        return self.options.group

    @property
    def is_leader(self) -> bool:
        """Whether this node currently leads."""
        return self._core.role is Role.LEADER

    @property
    def leader(self) -> str:
        """The known leader's address, or ``""``."""
        return self._core.leader

    @property
    def term(self) -> int:
        """The current term."""
        return self._core.term

    @property
    def role(self) -> Role:
        """The current role."""
        return self._core.role

    @property
    def applied_index(self) -> int:
        """The last index applied to the state machine."""
        return self._fsm.applied_index
