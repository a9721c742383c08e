"""`Node.read_index`: ReadIndex, lease and follower reads, and their errors."""

from __future__ import annotations

import asyncio

import pytest

from pyjraft.core.errors import NotLeaderError
from pyjraft.node import LeadershipLostError, Node, ReadTimeoutError
from tests.node.harness import LocalCluster, run, wait_for


def _rounds(node: Node) -> int:
    return node._core.read_only._round


def test_reads_of_one_loop_turn_share_one_round_and_see_acknowledged_writes() -> None:
    async def main() -> None:
        async with LocalCluster(seed=21) as c:
            leader = await c.leader()
            for _ in range(20):
                await leader.apply(b"1")
            before = _rounds(leader)
            indexes = await asyncio.gather(*(leader.read_index() for _ in range(100)))
            assert len(set(indexes)) == 1 and indexes[0] >= 20
            assert _rounds(leader) - before <= 2, "100 reads of one turn: one round"
            assert c.machines[leader.id].value == 20

    run(main())


def test_a_follower_read_waits_until_it_applied_the_leaders_read_index() -> None:
    async def main() -> None:
        async with LocalCluster(seed=22) as c:
            leader = await c.leader()
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            await wait_for(lambda: follower.leader == leader.id, 5, "follower knows leader")
            for _ in range(30):
                await leader.apply(b"1")
            index = await follower.read_index()
            assert index >= 30
            assert follower.applied_index >= index
            assert c.machines[follower.id].value == 30  # no stale read on the follower

    run(main())


def test_a_lease_read_needs_no_round_while_the_lease_holds() -> None:
    async def main() -> None:
        async with LocalCluster(seed=23) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            await leader.read_index()  # a confirmed round starts the lease
            await wait_for(leader._core.lease_valid, 5, "lease")
            before = _rounds(leader)
            index = await leader.read_index(lease=True)
            assert index >= 1
            assert _rounds(leader) == before, "a lease read sends no heartbeat round"

    run(main())


def test_no_leader_known_is_not_leader() -> None:
    async def main() -> None:
        async with LocalCluster(seed=24) as c:
            leader = await c.leader()
            for nid in list(c.nodes):
                c.net.isolate(nid)
            await wait_for(lambda: not leader.is_leader, 5, "leader steps down (check-quorum)")
            follower = next(n for n in c.nodes.values() if n is not leader)
            await wait_for(lambda: follower.leader == "", 5, "follower forgets the leader")
            with pytest.raises(NotLeaderError):
                await follower.read_index(timeout=1.0)

    run(main())


def test_an_isolated_leaders_read_fails_and_never_answers_stale() -> None:
    async def main() -> None:
        async with LocalCluster(seed=25) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            c.net.isolate(leader.id)
            # No majority answers its round: the read times out, or fails once it
            # steps down; it never resolves.
            with pytest.raises((ReadTimeoutError, LeadershipLostError)):
                await leader.read_index(timeout=0.1)
            with pytest.raises((ReadTimeoutError, LeadershipLostError)):
                await leader.read_index(timeout=2.0)

    run(main())
