"""Helpers shared by the transport tests."""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

T = TypeVar("T")


_LOOP_KINDS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])
_loop_factory: list[Callable[[], asyncio.AbstractEventLoop] | None] = [None]


@pytest.fixture(autouse=True, params=_LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every transport test runs on asyncio's own loop and on uvloop (which the
    servers use), since their transports differ in the details."""
    kind: str = request.param
    if kind == "uvloop":
        import uvloop

        _loop_factory[0] = uvloop.new_event_loop
    else:
        _loop_factory[0] = None
    yield kind
    _loop_factory[0] = None


def run(fn: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
    """Run ``fn()`` on a fresh event loop (of this test's `loop_kind`), bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    with asyncio.Runner(loop_factory=_loop_factory[0]) as runner:
        return runner.run(bounded())


@pytest.fixture
def seed() -> int:
    """The seed for this test's RNGs: fixed, so runs are deterministic, and
    printed, so a failure shows it. Set ``PYJRAFT_SEED`` to explore others."""
    s = int(os.environ.get("PYJRAFT_SEED", "20261127"))
    print(f"seed={s} (rerun with PYJRAFT_SEED={s})")
    return s


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` for state that no event exposes (counters of a background task)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)
