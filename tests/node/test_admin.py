"""The admin service (`pyjraft.node.admin`) and `AdminClient` over `LocalNetwork`:
hostile requests, authorization, routing, typed errors."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from pyjraft.client import UnknownOutcomeError
from pyjraft.client.admin import (
    AdminClient,
    AdminError,
    BadConfigurationError,
    BusyError,
    CatchUpTimeoutError,
    NoLeaderError,
    NotAuthorizedError,
    SnapshotsUnavailableError,
    TransferFailedError,
    UnavailableError,
    UnknownGroupError,
)
from pyjraft.node.admin import ADMIN_SERVICE, MAX_PEERS, MAX_REQUEST_BYTES, OPS, READ_OPS
from pyjraft.transport import LocalNetwork, LocalTransport
from pyjraft.transport.errors import RemoteError
from pyjraft.transport.tls import Identity, Role
from tests.node.harness import IDS, LocalCluster, run, wait_for

GROUP = "default"

MUTATIONS = {
    "add_peer": {"peer": "n9:1"},
    "remove_peer": {"peer": "n9:1"},
    "change_peers": {"voters": list(IDS)},
    "add_learners": {"peers": ["n9:1"]},
    "remove_learners": {"peers": ["n9:1"]},
    "transfer_leader": {"peer": None},
    "snapshot": {},
    "reset_peers": {"voters": list(IDS)},
}


def _caller(c: LocalCluster, identity: Identity | None = None) -> LocalTransport:
    t = LocalTransport(c.net, f"admin-{id(identity)}:1")
    t.identity = identity
    return t


def _admin(c: LocalCluster, t: LocalTransport, **kw: Any) -> AdminClient:
    kw.setdefault("find_leader_timeout", 2.0)
    return AdminClient(list(IDS), group=GROUP, rpc=t, **kw)  # type: ignore[arg-type]


HOSTILE: list[Any] = [
    None,
    5,
    b"op",
    [],
    {},
    {"op": "nope", "group": GROUP},
    {"op": b"leader", "group": GROUP},
    {"op": "leader"},
    {"op": "leader", "group": 5},
    {"op": "leader", "group": ""},
    {"op": "leader", "group": "g" * 2000},
    {"op": "leader", "group": GROUP, "extra": 1},
    {"op": "peers", "group": GROUP, "local": "yes"},
    {"op": "add_peer", "group": GROUP},
    {"op": "add_peer", "group": GROUP, "peer": 5},
    {"op": "add_peer", "group": GROUP, "peer": None},
    {"op": "add_peer", "group": GROUP, "peer": "no-port"},
    {"op": "add_peer", "group": GROUP, "peer": "h:99999"},
    {"op": "add_peer", "group": GROUP, "peer": "h:1" * 200},
    {"op": "add_learners", "group": GROUP, "peers": []},
    {"op": "add_learners", "group": GROUP, "peers": "n9:1"},
    {"op": "add_learners", "group": GROUP, "peers": ["n9:1", "n9:1"]},
    {"op": "change_peers", "group": GROUP, "voters": []},
    {"op": "change_peers", "group": GROUP, "voters": {"n1:1": 1}},
    {"op": "change_peers", "group": GROUP, "voters": [f"h:{i}" for i in range(1, MAX_PEERS + 2)]},
    {"op": "change_peers", "group": GROUP, "voters": list(IDS), "learners": [1]},
    {"op": "change_peers", "group": GROUP, "voters": list(IDS), "priorities": [["n1:1", -1]]},
    {"op": "change_peers", "group": GROUP, "voters": list(IDS), "priorities": [["n1:1"]]},
    {"op": "change_peers", "group": GROUP, "voters": list(IDS), "priorities": [["n1:1", True]]},
    {"op": "change_peers", "group": GROUP, "voters": list(IDS), "priorities": {"n1:1": 2}},
    {"op": "transfer_leader", "group": GROUP, "peer": 3},
    {"op": "reset_peers", "group": GROUP, "voters": None},
]


def test_hostile_requests_get_an_invalid_request_reply_and_change_nothing() -> None:
    async def main() -> None:
        async with LocalCluster(seed=61) as c:
            leader = await c.leader()
            t = _caller(c)
            for request in HOSTILE:
                reply = await t.call(leader.id, ADMIN_SERVICE, request)
                assert reply["error"] == "invalid_request", (request, reply)
                assert reply["message"]
            # Larger than the service takes: refused by the transport, undecoded.
            with pytest.raises(RemoteError, match="limit"):
                await t.call(leader.id, ADMIN_SERVICE, {"op": "x" * MAX_REQUEST_BYTES})
            assert set(leader.configuration.voters) == set(IDS)
            reply = await t.call(leader.id, ADMIN_SERVICE, {"op": "leader", "group": GROUP})
            assert reply["ok"]["leader"] == leader.id
            reply = await t.call(leader.id, ADMIN_SERVICE, {"op": "leader", "group": "other"})
            assert reply["error"] == "unknown_group"

    run(main())


def test_a_plain_client_certificate_may_read_but_not_change() -> None:
    async def main() -> None:
        async with LocalCluster(seed=62) as c:
            leader = await c.leader()
            client = _caller(c, Identity(Role.CLIENT, "app"))
            assert set(MUTATIONS) | READ_OPS == OPS
            for op, args in MUTATIONS.items():
                request = {"op": op, "group": GROUP, **args}
                reply = await client.call(leader.id, ADMIN_SERVICE, request)
                assert reply["error"] == "unauthorized", (op, reply)
            for op in READ_OPS:
                reply = await client.call(leader.id, ADMIN_SERVICE, {"op": op, "group": GROUP})
                assert "ok" in reply, (op, reply)
            assert set(leader.configuration.voters) == set(IDS)
            async with _admin(c, client) as admin:
                with pytest.raises(NotAuthorizedError):
                    await admin.transfer_leader()
                assert (await admin.get_leader())[0] == leader.id

    run(main())


@pytest.mark.parametrize("identity", [Identity(Role.ADMIN, "ops"), None], ids=["admin", "none"])
def test_an_admin_certificate_or_plaintext_may_change(identity: Identity | None) -> None:
    async def main() -> None:
        async with LocalCluster(seed=63) as c:
            leader = await c.leader()
            await c.start("n4:1", join=True)
            async with _admin(c, _caller(c, identity)) as admin:
                conf = await admin.add_learners(["n4:1"])
                assert conf.learners == ["n4:1"] and conf.leader == leader.id
                assert await admin.list_learners() == ["n4:1"]
                conf = await admin.change_peers([*IDS, "n4:1"], priorities={"n4:1": 0})
                assert set(conf.voters) == {*IDS, "n4:1"} and conf.priorities == {"n4:1": 0}

    run(main())


def test_changes_follow_the_leader_and_reads_report_the_group() -> None:
    async def main() -> None:
        async with LocalCluster(seed=64) as c:
            leader = await c.leader()
            follower = next(n for n in IDS if n != leader.id)
            t = _caller(c)
            reply = await t.call(
                follower, ADMIN_SERVICE, {"op": "add_peer", "group": GROUP, "peer": "n4:1"}
            )
            assert reply["error"] == "not_leader" and reply["leader"] == leader.id
            assert reply["members"] == sorted(IDS)
            await c.start("n4:1", join=True)
            await c.start("n5:1", join=True)
            # Told only the follower: the client follows its hint to the leader.
            admin = AdminClient([follower], group=GROUP, rpc=t)  # type: ignore[arg-type]
            conf = await admin.add_peer("n4:1")
            assert set(conf.voters) == {*IDS, "n4:1"}
            assert await admin.list_alive_peers() == list(conf.voters)
            peers = await admin.list_peers()
            assert peers.leader == leader.id and set(peers.progress) == set(conf.voters) - {
                leader.id
            }
            local = await admin.list_peers(member="n4:1")
            assert local.reported_by == "n4:1"
            # Leadership to a member the client was not given, then a change through it.
            assert await admin.transfer_leader("n4:1") == "n4:1"
            await wait_for(lambda: c.nodes["n4:1"].is_leader, 5, "n4 leads")
            conf = await admin.change_peers([*IDS, "n4:1", "n5:1"])
            assert len(conf.voters) == 5 and conf.leader == "n4:1"
            conf = await admin.remove_peer("n4:1")  # the leader itself
            assert "n4:1" not in conf.voters
            leader2 = await wait_for(
                lambda: next((n for n in c.nodes.values() if n.is_leader and n.id != "n4:1"), None),
                5,
                "another leads",
            )
            assert (await admin.get_leader())[0] == leader2.id
            # No target: the most up-to-date other voter.
            moved = await admin.transfer_leader()
            assert moved != leader2.id and moved in conf.voters
            await wait_for(lambda: c.nodes[moved].is_leader, 5, "the chosen voter leads")

    run(main())


def test_typed_errors() -> None:
    async def main() -> None:
        async with LocalCluster(seed=65, catchup_timeout_ms=300, check_quorum=False) as c:
            leader = await c.leader()
            t = _caller(c)
            admin = _admin(c, t)
            with pytest.raises(CatchUpTimeoutError, match="catch up"):
                await admin.add_peer("n9:1")  # never started
            first = admin.add_peer("n8:1")
            other = _admin(c, t)
            task = asyncio.ensure_future(first)
            await wait_for(lambda: leader._core._change is not None, 5, "change started")
            with pytest.raises(BusyError):
                await other.add_peer("n7:1")
            with pytest.raises(CatchUpTimeoutError):
                await task
            with pytest.raises(BadConfigurationError):
                await admin.transfer_leader("n9:1")  # not a voter
            with pytest.raises(BadConfigurationError):
                await admin.change_peers([])
            target = next(n for n in IDS if n != leader.id)
            c.net.isolate(target)
            with pytest.raises(TransferFailedError):
                await admin.transfer_leader(target)
            c.net.heal()
            with pytest.raises(UnknownGroupError):
                await AdminClient(list(IDS), group="nope", rpc=t).list_peers()  # type: ignore[arg-type]
            with pytest.raises(UnknownGroupError):
                await AdminClient(list(IDS), group="nope", rpc=t).get_leader()  # type: ignore[arg-type]
            await c.stop_all()
            quick = _admin(c, t, find_leader_timeout=0.3)
            with pytest.raises(NoLeaderError):
                await quick.add_peer("n4:1")
            with pytest.raises(NoLeaderError):
                await quick.get_leader()

    run(main())


def test_reset_peers_goes_to_the_member_named(tmp_path: object) -> None:
    async def main() -> None:
        c = LocalCluster(seed=66, data_dir=str(tmp_path))
        await c.start_all()
        try:
            leader = await c.leader()
            for _ in range(5):
                await leader.apply(b"1")
            t = _caller(c)
            admin = _admin(c, t)
            follower = next(n for n in IDS if n != leader.id)
            await wait_for(lambda: c.nodes[follower].applied_index >= leader.applied_index, 5, "")
            # This machine takes no snapshots (the counter example's do: tests/integration).
            with pytest.raises(SnapshotsUnavailableError):
                await admin.snapshot(follower)
            # Majority lost for good: reset the survivor.
            for nid in IDS:
                if nid != follower:
                    await c.stop(nid)
            conf = await admin.reset_peers(follower, [follower])
            assert conf.voters == [follower]
            await wait_for(lambda: c.nodes[follower].is_leader, 5, "the survivor leads")
        finally:
            await c.stop_all()

    run(main())


def test_an_unknown_outcome_is_reported_when_the_reply_is_lost() -> None:
    async def main() -> None:
        async with LocalCluster(seed=67, catchup_timeout_ms=2000) as c:
            leader = await c.leader()
            t = _caller(c)
            admin = _admin(c, t, change_timeout=0.2)
            admin.routes.update_leader(GROUP, leader.id)
            with pytest.raises(UnknownOutcomeError):
                await admin.add_peer("n9:1")  # waits for a peer that never catches up

    run(main())


def test_a_stopped_member_answers_unavailable() -> None:
    async def main() -> None:
        async with LocalCluster(seed=68) as c:
            await c.leader()
            node = c.nodes[IDS[0]]
            await node.shutdown()  # its transport still answers
            t = _caller(c)
            reply = await t.call(IDS[0], ADMIN_SERVICE, {"op": "leader", "group": GROUP})
            assert reply["error"] == "unavailable"
            with pytest.raises(UnavailableError):
                await _admin(c, t).snapshot(IDS[0])

    run(main())


@pytest.mark.parametrize(
    "reply",
    [None, 5, [], {}, {"ok": None}, {"ok": {"term": "x", "leader": 1}}, {"error": 7}],
)
def test_a_garbled_reply_is_an_error_not_a_crash(reply: Any) -> None:
    async def main() -> None:
        net = LocalNetwork(random.Random(69))
        server, caller = LocalTransport(net, "s:1"), LocalTransport(net, "c:1")

        async def garbled(request: Any) -> Any:
            return reply

        server.register_service(ADMIN_SERVICE, garbled)
        admin = AdminClient(["s:1"], group=GROUP, rpc=caller, find_leader_timeout=0.2)  # type: ignore[arg-type]
        for call in (admin.get_leader(), admin.list_peers(), admin.add_peer("h:1")):
            with pytest.raises(AdminError):
                await call

    run(main())
