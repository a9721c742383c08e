"""A `Node`'s lifecycle states and how it fails: `NodeState`, the `Done`
callback type, and `NodeFailure` (mixed into `Node`), which stops a node
that cannot go on safely and fails everyone waiting on it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyjraft.node.errors import NodeStorageError, ShutdownError, StateMachineError

if TYPE_CHECKING:
    from pyjraft.node.events import NodeEvents
    from pyjraft.node.fsm_caller import FSMCaller
    from pyjraft.node.membership import MembershipManager
    from pyjraft.node.options import NodeOptions
    from pyjraft.node.reads import ReadManager
    from pyjraft.node.turns import QueueDelay
    from pyjraft.transport.base import Transport


class NodeState(enum.Enum):
    """Lifecycle of a `Node`."""

    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


Done = Callable[[Any, BaseException | None], None]
"""Completion callback of `Node.submit`: ``done(result, None)`` or ``done(None, error)``."""


class NodeFailure:
    """`Node`'s failure handling."""

    options: NodeOptions
    state: NodeState
    error: BaseException | None
    events: NodeEvents
    transport: Transport
    _loop: asyncio.AbstractEventLoop
    _fsm: FSMCaller
    _tick_handle: asyncio.TimerHandle | None
    _queue: list[tuple[bytes, Done]]
    _waiting: dict[int, tuple[int, Done]]
    _queue_delay: QueueDelay
    _reads: ReadManager
    _membership: MembershipManager

    def _check_running(self) -> None:
        if self.state is NodeState.RUNNING:
            return
        if self.state is NodeState.ERROR and self.error is not None:
            if isinstance(self.error, (StateMachineError, NodeStorageError)):
                raise type(self.error)(str(self.error))
            raise NodeStorageError(f"node failed: {self.error!r}")
        raise ShutdownError("node is shut down")

    def _fatal(self, exc: BaseException) -> None:
        if self.state is not NodeState.RUNNING:
            return
        self.state = NodeState.ERROR
        self.error = exc
        self.events.fatal(exc)
        self._stop_participating()
        err: Exception = (
            exc
            if isinstance(exc, (StateMachineError, NodeStorageError))
            else NodeStorageError(f"node failed: {exc!r}")
        )
        self._fail_all(err)
        self._loop.create_task(self._fsm.error(exc))

    def _stop_participating(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        with contextlib.suppress(Exception):
            self.transport.unregister_group(self.options.group)

    def _fail_waiting(self, exc: Exception) -> None:
        waiting, self._waiting = self._waiting, {}
        self._queue_delay.clear()
        for _, done in waiting.values():
            done(None, exc)

    def _fail_all(self, exc: Exception) -> None:
        queue, self._queue = self._queue, []
        fail_queue(queue, exc)
        self._fail_waiting(exc)
        self._reads.close(exc)
        self._membership.fail(exc)


def fail_queue(queue: list[tuple[bytes, Done]], exc: BaseException) -> None:
    """Fail every proposal of ``queue`` with ``exc``."""
    for _, done in queue:
        done(None, exc)
