"""TEMPORARY read barrier: `read_index` through the log, until `Node.read_index` lands.

THIS MODULE IS A SHIM. ``Node.read_index(lease=...)`` (ReadIndex, built by
the lead) replaces it: when it lands, `read_index` below becomes
``return node.read_index(lease=lease)`` and the rest of this module goes.
Nothing else in `pyjraft.kv` calls the barrier.

How the shim is linearizable: a read waits for a no-op entry (the
``barrier`` command) proposed *after* the read arrived to be applied on this
node. The entry commits only if this node still led when a majority
accepted it, so every write acknowledged before the read arrived is
applied before it, and the read sees it. Reads arriving in the same loop
turn share one barrier (all of them arrived before it is proposed). It
costs a log entry (and its fsync) per turn of reads, which the real
ReadIndex does not; ``lease`` is accepted and ignored (the barrier is
always the safe path). It works on the leader only: a follower answers
`NotLeaderError`, as `Node.apply` does.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable
from typing import Any

from pyjraft.kv.protocol import BARRIER
from pyjraft.node import Node

_pending: weakref.WeakKeyDictionary[Node, asyncio.Future[int]] = weakref.WeakKeyDictionary()


def read_index(node: Node, lease: bool = False) -> Awaitable[int]:
    """Resolve to an index this node has applied, once a read served after it
    is linearizable. Raises what `Node.apply` raises (`NotLeaderError`, ...)."""
    del lease  # the barrier is always the safe path
    fut = _pending.get(node)
    if fut is None:
        fut = asyncio.get_running_loop().create_future()
        _pending[node] = fut
        asyncio.get_running_loop().call_soon(_propose, node, fut)
    return fut


def _propose(node: Node, fut: asyncio.Future[int]) -> None:
    # Reads arriving from now on need a barrier proposed after them.
    if _pending.get(node) is fut:
        del _pending[node]

    def done(result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(node.applied_index)

    try:
        node.submit(BARRIER, done)
    except Exception as exc:
        done(None, exc)


__all__ = ["read_index"]
