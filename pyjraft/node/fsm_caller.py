"""`FSMCaller`: the one place the user's `StateMachine` is called from.

Callbacks run serially, in the order the runtime issues them, on the event
loop; a callback that returns an awaitable is awaited before the next one.
The runtime awaits each call, so nothing can overtake an apply in flight.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Sequence
from typing import Any

from pyjraft.core.types import ConfState, Entry
from pyjraft.node.errors import StateMachineError
from pyjraft.node.state_machine import LeaderChangeContext, StateMachine, Status

log = logging.getLogger("pyjraft.node")


async def _resolve(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


class FSMCaller:
    """Calls one `StateMachine`, serially; see the module docstring."""

    def __init__(self, machine: StateMachine) -> None:
        self.machine = machine
        self.applied_index = 0
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = log
        """Where failing notification callbacks are logged (the node's own logger)."""

    async def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply user entries; returns one result per entry.

        Raises `StateMachineError` (wrapping the cause) if the machine raised or
        returned the wrong number of results.
        """
        out = self.apply_now(entries)
        if inspect.isawaitable(out):
            return await out
        return out

    def apply_now(self, entries: Sequence[Entry]) -> list[Any] | Awaitable[list[Any]]:
        """`apply` without a coroutine when ``on_apply`` is synchronous (the
        common case): the results, or an awaitable of them when ``on_apply``
        returned one."""
        if not entries:
            return []
        try:
            value: Any = self.machine.on_apply(entries)  # an awaitable too, at runtime
        except Exception as exc:
            raise self._raised(entries, exc) from exc
        if type(value) is not list and inspect.isawaitable(value):
            return self._finish_async(entries, value)
        return self._results(entries, value)

    async def _finish_async(self, entries: Sequence[Entry], value: Awaitable[Any]) -> list[Any]:
        try:
            results = await value
        except Exception as exc:
            raise self._raised(entries, exc) from exc
        return self._results(entries, results)

    @staticmethod
    def _raised(entries: Sequence[Entry], exc: Exception) -> StateMachineError:
        return StateMachineError(
            f"on_apply raised on entries {entries[0].index}..{entries[-1].index}: {exc!r}"
        )

    def _results(self, entries: Sequence[Entry], results: Any) -> list[Any]:
        if results is None:
            out: list[Any] = [None] * len(entries)
        else:
            out = list(results)
            if len(out) != len(entries):
                raise StateMachineError(
                    f"on_apply returned {len(out)} results for {len(entries)} entries"
                )
        self.applied_index = entries[-1].index
        return out

    async def leader_start(self, term: int) -> None:
        """Forward `StateMachine.on_leader_start`."""
        await self._call("on_leader_start", term)

    async def leader_stop(self, status: Status) -> None:
        """Forward `StateMachine.on_leader_stop`."""
        await self._call("on_leader_stop", status)

    async def start_following(self, ctx: LeaderChangeContext) -> None:
        """Forward `StateMachine.on_start_following`."""
        await self._call("on_start_following", ctx)

    async def stop_following(self, ctx: LeaderChangeContext) -> None:
        """Forward `StateMachine.on_stop_following`."""
        await self._call("on_stop_following", ctx)

    async def configuration_committed(self, conf: ConfState) -> None:
        """Forward `StateMachine.on_configuration_committed`."""
        await self._call("on_configuration_committed", conf)

    async def error(self, error: BaseException) -> None:
        """Forward `StateMachine.on_error`."""
        await self._call("on_error", error)

    async def shutdown(self) -> None:
        """Forward `StateMachine.on_shutdown`."""
        await self._call("on_shutdown")

    async def _call(self, name: str, *args: Any) -> None:
        # A notification callback that raises is logged, not fatal: it changes no
        # replicated state, unlike on_apply.
        try:
            await _resolve(getattr(self.machine, name)(*args))
        except Exception:
            self.log.exception("state machine %s raised", name)
