"""The `StateMachine` API: what the user implements, with JRaft's callbacks.

Every callback runs on the node's event loop, serially, in log order, from
one place (`pyjraft.node.fsm_caller.FSMCaller`); a callback may be a plain
method or a coroutine function. Keep them quick: while one runs, this group
applies nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pyjraft.core.types import ConfState, Entry, NodeId


@dataclass(frozen=True, slots=True)
class LeaderChangeContext:
    """Who leads (``""`` if unknown) and in which term, at a following start/stop."""

    leader: NodeId
    term: int


@dataclass(frozen=True, slots=True)
class Status:
    """Why something stopped: a short code and a human-readable reason."""

    code: str
    reason: str = ""


class StateMachine:
    """Subclass and override `on_apply`; the other callbacks default to doing nothing."""

    def on_apply(self, entries: Sequence[Entry]) -> Sequence[Any] | None:
        """Apply committed entries, in order; return one result per entry (or None
        for all None). The leader hands each result to the `Node.apply` caller
        that proposed the entry.

        Must be deterministic: every replica applies the same entries. Report an
        invalid command as a result, not an exception: an exception means the
        state machine is broken, and the node then stops applying, calls
        `on_error`, fails pending callers with `StateMachineError` and leaves
        the group (continuing would let replicas silently diverge).
        """
        raise NotImplementedError

    def on_leader_start(self, term: int) -> Any:
        """This node became leader of ``term``."""
        return None

    def on_leader_stop(self, status: Status) -> Any:
        """This node stopped leading."""
        return None

    def on_start_following(self, ctx: LeaderChangeContext) -> Any:
        """This node started following ``ctx.leader``."""
        return None

    def on_stop_following(self, ctx: LeaderChangeContext) -> Any:
        """This node stopped following ``ctx.leader`` (an election started, or it leads)."""
        return None

    def on_configuration_committed(self, conf: ConfState) -> Any:
        """A membership configuration was committed (and once at start)."""
        return None

    def on_error(self, error: BaseException) -> Any:
        """The node hit an unrecoverable error and stopped participating."""
        return None

    def on_shutdown(self) -> Any:
        """The node is shutting down; the last callback."""
        return None
