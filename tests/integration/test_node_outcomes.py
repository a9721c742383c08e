"""What a `Node.apply` caller learns at shutdown (the client's retry rules depend on it)."""

from __future__ import annotations

import asyncio

import pytest

from pyjraft.client import INVALID_REQUEST, NOT_LEADER, UNAVAILABLE, UNKNOWN_OUTCOME, serve_apply
from pyjraft.node import LeadershipLostError
from tests.node.harness import LocalCluster, run, wait_for


def test_shutdown_reports_proposed_entries_as_unknown_outcome() -> None:
    """An entry already proposed (it may commit on the other replicas) must not
    fail with `ShutdownError`, which promises nothing was proposed."""

    async def main() -> None:
        async with LocalCluster(seed=11) as c:
            leader = await c.leader()
            c.net.isolate(leader.id)  # nothing commits: the entry stays pending
            pending = asyncio.ensure_future(leader.apply(b"1"))
            served = asyncio.ensure_future(serve_apply(leader, b"1"))
            await wait_for(lambda: leader.stats["proposals"] >= 2, 5, "proposed")
            await leader.shutdown()
            with pytest.raises(LeadershipLostError):
                await pending
            assert (await served)["error"] == UNKNOWN_OUTCOME
            assert (await serve_apply(leader, b"1"))["error"] == UNAVAILABLE

    run(main())


def test_serve_apply_is_a_future_of_the_reply_for_every_outcome() -> None:
    async def main() -> None:
        async with LocalCluster(seed=12, max_entry_bytes=64) as c:
            leader = await c.leader()
            ok = serve_apply(leader, b"5")
            assert isinstance(ok, asyncio.Future), "a future, not a coroutine"
            assert await ok == {"ok": 5}
            follower = next(n for n in c.nodes.values() if n is not leader)
            refused = await serve_apply(follower, b"1")  # refused at once, in the future
            assert refused["error"] == NOT_LEADER and refused["leader"] == leader.id
            too_big = await serve_apply(leader, b"1" * 65)
            assert too_big["error"] == INVALID_REQUEST
            # A caller that gives up does not disturb the write.
            gone = serve_apply(leader, b"2")
            gone.cancel()
            await wait_for(lambda: c.machines[leader.id].value == 7, 5, "applied anyway")

    run(main())
