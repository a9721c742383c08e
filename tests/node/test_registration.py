"""A member on a new or wiped data directory registers its instance with its
peers before it takes part; a wiped member is refused with a clear error; a
member restarted on its own directory starts at once (issue 13, section 5).
In process, over `LocalNetwork`: every outcome is awaited, none timed."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from pyjraft.node import Node, NodeState
from pyjraft.node.errors import MemberDataLostError, RegistrationError
from pyjraft.node.members import MEMBERS_SERVICE, MembersService
from pyjraft.storage.identity import IdentityMismatchError, MemberRegistry, load_identity
from pyjraft.transport.local import LocalTransport
from tests.node.harness import IDS, LocalCluster, run, wait_for

N1, N2, N3 = IDS


def gdir(c: LocalCluster, nid: str) -> Path:
    return Path(f"{c.data_dir}/{nid}/default")


def instance(c: LocalCluster, nid: str) -> str:
    ident = load_identity(gdir(c, nid))
    assert ident is not None
    return ident.instance_id


def registry(c: LocalCluster, nid: str) -> dict[str, str]:
    return MemberRegistry(gdir(c, nid)).as_dict()


def service(node: Node) -> MembersService:
    return MembersService.for_transport(node.transport)


def test_a_new_cluster_registers_every_instance_with_every_member(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=31, data_dir=str(tmp_path)) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            every = {nid: instance(c, nid) for nid in IDS}
            assert len(set(every.values())) == 3
            await wait_for(
                lambda: all(registry(c, nid) == every for nid in IDS), 5, "every registry full"
            )
            assert {n.status()["registration"] for n in c.nodes.values()} == {"registered"}

    run(main())


def test_a_member_restarted_on_its_directory_starts_at_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=32, data_dir=str(tmp_path)) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            follower = next(nid for nid in IDS if nid != leader.id)
            await wait_for(
                lambda: all(len(registry(c, nid)) == 3 for nid in IDS), 5, "every registry full"
            )
            asked = {nid: dict(service(c.nodes[nid]).stats) for nid in IDS if nid != follower}
            await c.stop(follower)
            node = await c.start(follower)
            assert node.status()["registration"] == "registered"  # no round trip
            assert await leader.apply(b"1") == 2
            await wait_for(lambda: c.machines[follower].value == 2, 5, "catches up")
            for nid, before in asked.items():
                assert service(c.nodes[nid]).stats == before, "nobody was asked again"

    run(main())


def test_two_members_start_a_new_cluster_and_the_third_joins_it_later(tmp_path: Path) -> None:
    async def main() -> None:
        c = LocalCluster(seed=33, data_dir=str(tmp_path))
        try:
            await c.start(N1)
            await c.start(N2)
            leader = await c.leader()
            assert await leader.apply(b"5") == 5
            # A first-time member of the running cluster: both others record it.
            third = await c.start(N3)
            await wait_for(lambda: third.status()["registration"] == "registered", 5, "joins")
            await wait_for(lambda: c.machines[N3].value == 5, 5, "catches up")
            assert registry(c, N1)[N3] == registry(c, N2)[N3] == instance(c, N3)
        finally:
            await c.stop_all()

    run(main())


def test_a_first_time_member_waits_for_a_majority_of_the_others(tmp_path: Path) -> None:
    async def main() -> None:
        c = LocalCluster(seed=34, data_dir=str(tmp_path))
        try:
            await c.start(N1)
            await c.start(N2)
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            other = N2 if leader.id == N1 else N1
            await c.stop(other)
            third = await c.start(N3)  # needs N1 and N2: the cluster has data
            registration = third.registration
            assert registration is not None
            await wait_for(lambda: registration.accepted == {leader.id}, 5, "recorded by one")
            assert third.status()["registration"] == "pending: 1 of 2 peers recorded this instance"
            assert other in registration.waiting
            assert third.term == 0 and not third.is_leader
            await c.start(other)
            await wait_for(lambda: third.status()["registration"] == "registered", 10, "joins")
            await wait_for(lambda: c.machines[N3].value == 1, 5, "catches up")
        finally:
            await c.stop_all()

    run(main())


def test_a_wiped_member_is_refused_and_the_cluster_keeps_serving(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=35, data_dir=str(tmp_path)) as c:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            victim = next(nid for nid in IDS if nid != leader.id)
            await wait_for(lambda: len(registry(c, victim)) == 3, 5, "registered everywhere")
            old = instance(c, victim)
            await c.stop(victim)
            shutil.rmtree(gdir(c, victim))
            node = await c.start(victim)
            await wait_for(lambda: node.state is NodeState.ERROR, 10, "refused")
            err = node.error
            assert isinstance(err, MemberDataLostError)
            text = str(err)
            assert f"member {victim} of group 'default' refuses to start" in text
            assert "was lost or replaced" in text and old in text
            assert instance(c, victim) in text
            assert "--force-new-instance" in text and "add it back" in text
            assert node.status()["registration"] == "refused"
            assert node.term == 0  # it never took part: no vote, no term
            # The others still know the old instance, and serve.
            for nid in IDS:
                if nid != victim:
                    assert registry(c, nid)[victim] == old
            assert await leader.apply(b"1") == 2
            assert sum(service(c.nodes[n]).stats["conflicts"] for n in IDS if n != victim) >= 1

    run(main())


def test_force_new_instance_rejoins_with_a_new_instance(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=36, data_dir=str(tmp_path)) as c:
            leader = await c.leader()
            assert await leader.apply(b"4") == 4
            victim = next(nid for nid in IDS if nid != leader.id)
            await wait_for(lambda: len(registry(c, victim)) == 3, 5, "registered everywhere")
            old = instance(c, victim)
            await c.stop(victim)
            shutil.rmtree(gdir(c, victim))
            node = await c.start(victim, force_new_instance=True)
            await wait_for(lambda: node.status()["registration"] == "registered", 10, "joins")
            new = instance(c, victim)
            assert new != old
            # The leader learns that the follower's log went backwards from the
            # next append it rejects (the core's re-probe), and refills it.
            assert await leader.apply(b"1") == 5
            await wait_for(lambda: c.machines[victim].value == 5, 5, "catches up")
            for nid in IDS:
                await wait_for(lambda nid=nid: registry(c, nid).get(victim) == new, 5, "replaced")
            assert sum(service(c.nodes[n]).stats["replaced"] for n in IDS if n != victim) == 2

    run(main())


def test_a_directory_of_another_member_is_refused_at_start(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=37, data_dir=str(tmp_path)) as c:
            await c.leader()
            await c.stop(N3)
            shutil.rmtree(gdir(c, N3))
            shutil.copytree(gdir(c, N2), gdir(c, N3), ignore=shutil.ignore_patterns("lock"))
            with pytest.raises(IdentityMismatchError, match=f"node_id is '{N2}', not '{N3}'"):
                await c.start(N3)

    run(main())


def test_a_member_of_another_cluster_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        c = LocalCluster(seed=38, data_dir=str(tmp_path))
        try:
            await c.start(N1)
            await c.start(N2)
            await c.leader()
            stranger = await c.start(N3, cluster_id="elsewhere")
            await wait_for(lambda: stranger.state is NodeState.ERROR, 10, "refused")
            assert isinstance(stranger.error, RegistrationError)
            assert "belongs to cluster 'default', not 'elsewhere'" in str(stranger.error)
        finally:
            await c.stop_all()

    run(main())


def test_the_service_checks_what_it_is_asked(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=39, data_dir=str(tmp_path)) as c:
            leader = await c.leader()
            caller = LocalTransport(c.net, "caller:1")

            async def ask(request: Any, at: str = N1) -> Any:
                return await caller.call(at, MEMBERS_SERVICE, request)

            try:
                for bad in (
                    [],
                    {"op": "nope", "group": "default"},
                    {"op": "identity"},
                    {"op": "identity", "group": "default", "extra": 1},
                    {"op": "register", "group": "default", "cluster": "default", "member": 5},
                    {"op": "register", "group": "default", "cluster": "", "member": N2},
                ):
                    assert (await ask(bad))["error"] == "invalid_request", bad
                other = await ask({"op": "identity", "group": "other"})
                assert other["error"] == "unavailable"
                me = await ask({"op": "identity", "group": "default"})
                assert me["ok"]["member"] == N1 and me["ok"]["instance"] == instance(c, N1)
                # A claim is checked with the member itself, at its own address:
                # nobody answers as "ghost:1", and N2 is not what "caller:1" says.
                ghost = {"op": "register", "group": "default", "cluster": "default"}
                answer = await ask({**ghost, "member": "ghost:1"})
                assert answer["error"] == "unavailable" and "ghost:1" in answer["message"]
                answer = await ask({**ghost, "member": N2})
                assert answer["ok"]["result"] == "already"  # N2 answered for itself
                assert "ghost:1" not in registry(c, N1)
                wrong = await ask({**ghost, "cluster": "elsewhere", "member": N2})
                assert wrong["error"] == "cluster_mismatch"
                assert await leader.apply(b"1") == 1
            finally:
                await caller.close()

    run(main())
