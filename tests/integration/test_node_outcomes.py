"""What a `Node.apply` caller learns at shutdown (the client's retry rules depend on it)."""

from __future__ import annotations

import asyncio

import pytest

from pyjraft.client import UNAVAILABLE, UNKNOWN_OUTCOME, serve_apply
from pyjraft.node import LeadershipLostError
from tests.node.harness import LocalCluster, run, wait_for


def test_shutdown_reports_proposed_entries_as_unknown_outcome() -> None:
    """An entry already proposed (it may commit on the other replicas) must not
    fail with `ShutdownError`, which promises nothing was proposed."""

    async def main() -> None:
        c = LocalCluster(seed=11)
        await c.start_all()
        try:
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
        finally:
            await c.stop_all()

    run(main())
