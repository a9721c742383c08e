"""Choosing the event loop: uvloop when installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when uvloop is importable, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``coro_fn()`` to completion on the best available event loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro_fn())


def tune_gc(gen0_threshold: int = 50_000) -> None:
    """Tune the garbage collector for a raft server process; call once after start-up.

    Moves everything alive now (modules, configuration) out of the collector's
    view with `gc.freeze`, and collects the young generation less often, so
    full collections are rarer and shorter and a leader's tail latency does
    not carry their pauses. Process-wide, hence never done implicitly: call it
    from your server's ``main``, not from library code.
    """
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
