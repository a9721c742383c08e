"""`pyjraft.ops.OpsServer` over an in-process 3-node cluster: what /metrics,
/status.json, /describe.json and /health say, and who may ask."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from pyjraft.node import Node, NodeState, StateMachineError
from pyjraft.ops import OpsServer, node_health
from tests.node.harness import IDS, LocalCluster, run, wait_for

SEED = 17
CALM = {"election_timeout_ms": 1500, "heartbeat_ms": 50}
"""Timers under which no election happens while a test reads roles after the fact."""


@asynccontextmanager
async def serving(
    nodes: list[Node], **options: Any
) -> AsyncIterator[tuple[OpsServer, aiohttp.ClientSession, str]]:
    ops = OpsServer(nodes=nodes, **options)
    addr = await ops.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            yield ops, session, f"http://{addr}"
    finally:
        await ops.close()


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as r:
        return r.status, await r.text()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _writes(leader: Node, n: int) -> None:
    for _ in range(n):
        await asyncio.gather(*(leader.apply(b"1") for _ in range(10)))


def test_metrics_report_counters_gauges_histograms_and_peers() -> None:
    async def scenario() -> None:
        async with LocalCluster(SEED, metrics=True, **CALM) as c:
            leader = await c.leader(15)
            await _writes(leader, 20)
            await leader.read_index()
            await leader.read_index(lease=True)
            follower = next(n for n in c.nodes.values() if n is not leader)
            await follower.read_index()
            async with serving(list(c.nodes.values())) as (_, session, base):
                status, text = await _get(session, f"{base}/metrics")
        assert status == 200
        s = _samples(text)
        lab = {"group": "default", "node": leader.id}
        assert _value(s, "pyjraft_reads_total", **lab) == 2
        assert _value(s, "pyjraft_lease_reads_total", **lab) == 1
        assert _value(s, "pyjraft_read_index_seconds_count", **lab) == 2
        flab = {"group": "default", "node": follower.id}
        assert _value(s, "pyjraft_follower_reads_total", **flab) == 1
        assert _value(s, "pyjraft_read_index_seconds_count", **flab) == 1
        assert _value(s, "pyjraft_follower_read_errors_total", **flab) == 0
        assert _value(s, "pyjraft_proposals_total", **lab) == leader.stats["proposals"] >= 200
        assert _value(s, "pyjraft_proposal_batches_total", **lab) == leader.stats["batches"]
        assert _value(s, "pyjraft_term", **lab) == leader.term
        assert _value(s, "pyjraft_commit_index", **lab) == leader.status()["commit_index"]
        assert _value(s, "pyjraft_role", **lab, role="leader") == 1
        assert _value(s, "pyjraft_role", **lab, role="follower") == 0
        assert _value(s, "pyjraft_elections_won_total", **lab) == 1
        assert _value(s, "pyjraft_proposal_batch_size_count", **lab) == leader.stats["batches"]
        assert _value(s, "pyjraft_replicate_seconds_count", **lab) >= 1
        assert _value(s, "pyjraft_apply_seconds_count", **lab) >= 1
        for peer in IDS:
            if peer == leader.id:
                continue
            match = _value(s, "pyjraft_peer_match_index", **lab, peer=peer)
            lag = _value(s, "pyjraft_peer_lag_entries", **lab, peer=peer)
            assert match + lag == leader.status()["last_index"]
            follower = {"group": "default", "node": peer}
            assert _value(s, "pyjraft_role", **follower, role="follower") == 1
            assert _value(s, "pyjraft_votes_granted_total", **follower) <= 1
            assert _value(s, "pyjraft_heartbeat_gap_seconds_count", **follower) >= 0
        assert _value(s, "pyjraft_heartbeat_gap_seconds_count", **lab) == 0
        assert _value(s, "pyjraft_storage_retries_total", **lab) == 0
        assert _value(s, "pyjraft_storage_stalled_seconds", **lab) == 0
        # The in-process transport exports its counters too, and the loop its lag.
        assert any(k[0] == "pyjraft_transport_messages_sent_total" for k in s)
        assert ("pyjraft_event_loop_lag_seconds_count", frozenset()) in s

    run(scenario())


def test_status_json_and_describe() -> None:
    async def scenario() -> None:
        async with LocalCluster(SEED, metrics=True, **CALM) as c:
            leader = await c.leader(15)
            await _writes(leader, 5)
            await leader.read_index()
            async with serving(list(c.nodes.values())) as (_, session, base):
                async with session.get(f"{base}/status.json") as r:
                    snap = await r.json()
                async with session.get(f"{base}/describe.json") as r:
                    described = await r.json()
        groups = {g["status"]["id"]: g for g in snap["groups"]}
        assert set(groups) == set(IDS)
        lead = groups[leader.id]
        assert lead["status"]["role"] == "leader"
        assert set(lead["status"]["peers"]) == set(IDS) - {leader.id}
        assert [e["event"] for e in lead["elections"]][-1] == "election_won"
        assert lead["latency"]["replicate"][0] > 0
        assert lead["latency"]["read_index"][0] > 0
        assert snap["process"]["pid"] > 0
        d = {x["id"]: x for x in described}[leader.id]
        assert {"queues", "timers", "events", "histograms", "options", "transport"} <= set(d)
        assert d["queues"]["awaiting_apply"] == 0
        assert d["timers"]["heartbeat_ms"] == 50

    run(scenario())


def test_health_is_ok_with_a_leader_and_503_without() -> None:
    async def scenario() -> None:
        async with LocalCluster(SEED, **CALM) as c:
            leader = await c.leader(15)
            follower = next(n for n in c.nodes.values() if n is not leader)
            async with serving([follower]) as (_, session, base):
                status, text = await _get(session, f"{base}/health")
                assert status == 200, text
                status, _ = await _get(session, f"{base}/health?group=other")
                assert status == 503
                # Without a quorum the follower stops hearing from any leader.
                for nid in [n for n in c.nodes if n != follower.id]:
                    await c.stop(nid)

                async def unhealthy() -> bool:
                    return (await _get(session, f"{base}/health"))[0] == 503

                deadline = asyncio.get_running_loop().time() + 10
                while not await unhealthy():
                    assert asyncio.get_running_loop().time() < deadline, "still healthy"
                    await asyncio.sleep(0.02)

    run(scenario())


def test_a_failed_node_reports_error_as_its_role_everywhere() -> None:
    async def scenario() -> None:
        async with LocalCluster(SEED, **CALM) as c:
            leader = await c.leader(15)
            c.machines[leader.id].fail_on = b"13"
            with pytest.raises(StateMachineError):
                await leader.apply(b"13")
            await wait_for(lambda: leader.state is NodeState.ERROR, 5, "leader not in ERROR")
            st = leader.status()
            assert st["role"] == "error"
            assert "error" in st
            assert node_health(st, 150) == (False, "node is error")
            async with serving([leader]) as (_, session, base):
                status, _ = await _get(session, f"{base}/health")
                assert status == 503
                s = _samples((await _get(session, f"{base}/metrics"))[1])
                lab = {"group": "default", "node": leader.id}
                assert _value(s, "pyjraft_role", **lab, role="error") == 1
                assert _value(s, "pyjraft_role", **lab, role="leader") == 0
                page = (await _get(session, f"{base}/status"))[1]
                assert "ERROR" in page and "StateMachineError" in page

    run(scenario())


def test_plaintext_refuses_non_loopback_addresses() -> None:
    async def scenario() -> None:
        ops = OpsServer()
        with pytest.raises(ValueError, match="without TLS"):
            await ops.start("0.0.0.0", 0)
        await ops.close()

    run(scenario())


def test_later_routes_share_the_authorization_check() -> None:
    # The KV gateway will add /v1/kv/... this way; it must get the same check.
    async def scenario() -> None:
        allowed = {"yes": True}

        def authorize(request: web.Request) -> bool:
            return allowed["yes"]

        ops = OpsServer(authorize=authorize)

        async def kv(request: web.Request) -> web.Response:
            return web.json_response({"key": request.match_info["key"]})

        ops.add_routes([web.get("/v1/kv/{key}", kv)])
        addr = await ops.start("127.0.0.1", 0)
        try:
            with pytest.raises(RuntimeError):
                ops.add_routes([web.get("/late", kv)])
            async with aiohttp.ClientSession() as session:
                assert await _get(session, f"http://{addr}/v1/kv/a") == (200, '{"key": "a"}')
                allowed["yes"] = False
                for path in ("/v1/kv/a", "/metrics", "/status"):
                    assert (await _get(session, f"http://{addr}{path}"))[0] == 403
        finally:
            await ops.close()

    run(scenario())


def test_status_page_refresh_parameter() -> None:
    async def scenario() -> None:
        async with LocalCluster(SEED, **CALM) as c:
            await c.leader(15)
            async with serving(list(c.nodes.values()), refresh_s=3) as (_, session, base):
                page = (await _get(session, f"{base}/status"))[1]
                assert 'http-equiv="refresh" content="3"' in page
                page = (await _get(session, f"{base}/status?refresh=0"))[1]
                assert "http-equiv" not in page
                assert (await _get(session, f"{base}/status?refresh=x"))[0] == 400

    run(scenario())
