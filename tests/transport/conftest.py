"""Helpers shared by the transport tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
    """Run ``fn()`` on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(bounded())


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
