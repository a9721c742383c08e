"""`Node` membership changes and leadership transfer over `LocalNetwork`."""

from __future__ import annotations

import asyncio

import pytest

from pyjraft.core.errors import ConfChangeBusyError, NotLeaderError, ProposalDroppedError
from pyjraft.core.types import ConfState
from pyjraft.node import LeadershipLostError, Node, NodeState
from pyjraft.node.membership import ConfChangeError, TransferError
from tests.node.harness import IDS, LocalCluster, run, wait_for


async def _write(leader: Node, n: int) -> None:
    for _ in range(n):
        await leader.apply(b"1")


def _confs(c: LocalCluster, nid: str) -> list[ConfState]:
    return [conf for kind, conf in c.machines[nid].events if kind == "conf"]


def test_grow_from_three_to_five_voters_and_the_new_ones_catch_up() -> None:
    async def main() -> None:
        async with LocalCluster(seed=41) as c:
            leader = await c.leader()
            await _write(leader, 20)
            await c.start("n4:1", join=True)
            await c.start("n5:1", join=True)
            conf = await leader.change_peers((*IDS, "n4:1", "n5:1"))
            assert set(conf.voters) == {*IDS, "n4:1", "n5:1"} and not conf.voters_outgoing
            await _write(leader, 5)
            for nid in ("n4:1", "n5:1"):
                await wait_for(lambda nid=nid: c.machines[nid].value == 25, 5, f"{nid} caught up")
                assert set(c.nodes[nid].configuration.voters) == set(conf.voters)
            # Every member saw the joint configuration, then the final one, committed.
            for nid in c.nodes:
                await wait_for(lambda nid=nid: len(_confs(c, nid)) >= 1, 5, f"{nid} conf")
                assert _confs(c, nid)[-1].voters == conf.voters
            assert any(cf.voters_outgoing for cf in _confs(c, leader.id))

    run(main())


def test_a_five_voter_group_survives_two_of_the_old_members_stopping() -> None:
    async def main() -> None:
        async with LocalCluster(seed=42) as c:
            leader = await c.leader()
            await c.start("n4:1", join=True)
            await c.start("n5:1", join=True)
            await leader.change_peers((*IDS, "n4:1", "n5:1"))
            for nid in [n for n in IDS if n != leader.id][:2]:
                await c.stop(nid)
            await _write(leader, 10)  # 3 of 5 still a majority
            assert c.machines[leader.id].value == 10

    run(main())


def test_removing_the_leader_finishes_the_change_then_another_leads() -> None:
    async def main() -> None:
        async with LocalCluster(seed=43) as c:
            leader = await c.leader()
            await _write(leader, 5)
            conf = await leader.remove_peer(leader.id)
            assert leader.id not in conf.voters
            new = await wait_for(
                lambda: next(
                    (n for n in c.nodes.values() if n.is_leader and n is not leader), None
                ),
                5,
                "a remaining voter leads",
            )
            assert not leader.is_leader
            await _write(new, 5)
            await wait_for(
                lambda: all(c.machines[n].value == 10 for n in conf.voters), 5, "both apply"
            )

    run(main())


def test_a_learner_receives_the_log_but_does_not_count() -> None:
    async def main() -> None:
        async with LocalCluster(seed=44) as c:
            leader = await c.leader()
            await c.start("n4:1", join=True)
            conf = await leader.add_learners(["n4:1"])
            assert conf.learners == ("n4:1",) and "n4:1" not in conf.voters
            await _write(leader, 10)
            await wait_for(lambda: c.machines["n4:1"].value == 10, 5, "learner applies")
            # Stop both other voters: with a learner the leader has no majority.
            for nid in IDS:
                if nid != leader.id:
                    await c.stop(nid)
            with pytest.raises((TimeoutError, LeadershipLostError, NotLeaderError)):
                await asyncio.wait_for(leader.apply(b"1"), 1.0)
            assert not c.nodes["n4:1"].is_leader

    run(main())


def test_a_learner_is_promoted_to_voter() -> None:
    async def main() -> None:
        async with LocalCluster(seed=45) as c:
            leader = await c.leader()
            await c.start("n4:1", join=True)
            await leader.add_learners(["n4:1"])
            conf = await leader.change_peers((*IDS, "n4:1"))
            assert "n4:1" in conf.voters and not conf.learners

    run(main())


def test_replace_a_member_one_change() -> None:
    async def main() -> None:
        async with LocalCluster(seed=46) as c:
            leader = await c.leader()
            gone = next(n for n in IDS if n != leader.id)
            await c.stop(gone)
            await c.start("n4:1", join=True)
            voters = (*(n for n in IDS if n != gone), "n4:1")
            conf = await leader.change_peers(voters)
            assert set(conf.voters) == set(voters)
            await _write(leader, 3)
            await wait_for(lambda: c.machines["n4:1"].value == 3, 5, "replacement applies")

    run(main())


def test_transfer_leadership_to_each_follower_in_turn() -> None:
    async def main() -> None:
        async with LocalCluster(seed=47) as c:
            leader = await c.leader()
            for target in [*IDS, *IDS]:
                leader = await c.leader()
                if target == leader.id:
                    continue
                await _write(leader, 3)
                got = await leader.transfer_leadership_to(target)
                assert got == target
                await wait_for(lambda t=target: c.nodes[t].is_leader, 5, f"{target} leads")
                await _write(c.nodes[target], 1)

    run(main())


def test_transfer_to_an_unreachable_follower_is_abandoned_and_the_leader_stays() -> None:
    async def main() -> None:
        async with LocalCluster(seed=48, check_quorum=False) as c:
            leader = await c.leader()
            target = next(n for n in IDS if n != leader.id)
            c.net.isolate(target)
            await _write(leader, 2)
            with pytest.raises(TransferError):
                await leader.transfer_leadership_to(target)
            assert leader.is_leader
            await _write(leader, 1)  # proposals accepted again

    run(main())


def test_a_change_whose_new_member_never_catches_up_is_abandoned() -> None:
    async def main() -> None:
        async with LocalCluster(seed=49, catchup_timeout_ms=300) as c:
            leader = await c.leader()
            with pytest.raises(ConfChangeError):
                await leader.add_peer("n9:1")  # never started
            assert set(leader.configuration.voters) == set(IDS)
            await _write(leader, 1)
            await c.start("n4:1", join=True)
            await leader.add_peer("n4:1")  # a later change is accepted

    run(main())


def test_one_change_at_a_time_and_only_on_the_leader() -> None:
    async def main() -> None:
        async with LocalCluster(seed=50, catchup_timeout_ms=500) as c:
            leader = await c.leader()
            first = leader.add_peer("n9:1")
            with pytest.raises(ConfChangeBusyError):
                await leader.add_peer("n8:1")
            follower = next(n for n in c.nodes.values() if n is not leader)
            with pytest.raises(NotLeaderError):
                await follower.add_peer("n8:1")
            with pytest.raises(ConfChangeError):
                await first

    run(main())


def test_configuration_survives_a_restart(tmp_path: object) -> None:
    async def main() -> None:
        c = LocalCluster(seed=51, data_dir=str(tmp_path))
        await c.start_all()
        try:
            leader = await c.leader()
            await c.start("n4:1", join=True)
            conf = await leader.add_peer("n4:1")
            await _write(leader, 4)
            await wait_for(lambda: c.machines["n4:1"].value == 4, 5, "n4 applies")
            await c.stop_all()
            for nid in IDS:
                await c.start(nid)
            await c.start("n4:1", join=True)
            for node in c.nodes.values():
                assert set(node.configuration.voters) == set(conf.voters)
            leader = await c.leader()
            await _write(leader, 1)
        finally:
            await c.stop_all()

    run(main())


def test_reset_peers_recovers_a_group_that_lost_its_majority_for_good() -> None:
    async def main() -> None:
        async with LocalCluster(seed=52) as c:
            leader = await c.leader()
            await _write(leader, 3)
            survivor = next(n for n in IDS if n != leader.id)
            for nid in IDS:
                if nid != survivor:
                    await c.stop(nid)
            node = c.nodes[survivor]
            node.reset_peers([survivor])
            await wait_for(lambda: node.is_leader, 5, "the survivor leads alone")
            await _write(node, 2)
            assert c.machines[survivor].value == 5
            assert node.configuration.voters == (survivor,)
            kinds = [e["event"] for e in node.events.recent]
            assert "conf_reset" in kinds

    run(main())


def test_a_removed_member_added_back_on_a_new_directory_is_not_refused(tmp_path: object) -> None:
    async def main() -> None:
        import shutil

        c = LocalCluster(seed=53, data_dir=str(tmp_path))
        await c.start_all()
        try:
            leader = await c.leader()
            await _write(leader, 2)
            gone = next(n for n in IDS if n != leader.id)
            await leader.remove_peer(gone)
            await c.stop(gone)
            shutil.rmtree(f"{tmp_path}/{gone}")
            others = [n for n in IDS if n != gone]
            await wait_for(
                lambda: all(
                    gone not in c.nodes[n].registration.hosted.registry.as_dict()  # type: ignore[union-attr]
                    for n in others
                ),
                5,
                "the others forget the removed member's instance",
            )
            await c.start(gone, join=True)
            await leader.add_peer(gone)
            await _write(leader, 1)
            await wait_for(lambda: c.machines[gone].value == 3, 5, "re-added member applies")
        finally:
            await c.stop_all()

    run(main())


def test_writes_during_a_transfer_are_refused_not_fatal() -> None:
    async def main() -> None:
        async with LocalCluster(seed=54) as c:
            leader = await c.leader()
            await _write(leader, 2)
            target = next(n for n in IDS if n != leader.id)
            c.net.isolate(target)  # the transfer stays under way
            transfer = leader.transfer_leadership_to(target)
            await asyncio.sleep(0)
            with pytest.raises(ProposalDroppedError):
                await leader.apply(b"1")
            assert leader.state is NodeState.RUNNING
            with pytest.raises(TransferError):
                await transfer
            await _write(leader, 1)  # accepted again once the transfer is abandoned
            assert c.machines[leader.id].value == 3

    run(main())
