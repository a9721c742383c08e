"""Addresses, the Transport protocol, and RPC corner cases."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from pyjraft.transport import (
    LocalNetwork,
    LocalTransport,
    RpcClient,
    ServerLimits,
    TcpTransport,
    Transport,
    format_address,
    parse_address,
)

from .conftest import run


@pytest.mark.parametrize(
    ("addr", "parsed"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("node-1.example:65535", ("node-1.example", 65535)),
        ("[::1]:9000", ("::1", 9000)),
    ],
)
def test_addresses_round_trip(addr: str, parsed: tuple[str, int]) -> None:
    assert parse_address(addr) == parsed
    assert format_address(*parsed) == addr


@pytest.mark.parametrize(
    "bad", ["", "host", ":80", "host:", "host:0", "host:65536", "h:-1", "h:8x"]
)
def test_bad_addresses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


def test_both_transports_satisfy_the_protocol() -> None:
    async def main() -> None:
        tcp: Transport = await TcpTransport.start()
        local: Transport = LocalTransport(LocalNetwork(random.Random(0)), "x")
        for t in (tcp, local):
            await t.remove_peer("nobody:1")
            await t.close()
            await t.close()  # idempotent

    run(main)


def test_rpc_cancelled_call_and_bounded_requests_per_connection() -> None:
    async def main() -> None:
        server = await TcpTransport.start(limits=ServerLimits(max_requests_per_connection=2))
        gate = asyncio.Event()
        arrived: asyncio.Queue[Any] = asyncio.Queue()

        async def gated(req: Any) -> Any:
            arrived.put_nowait(req)
            await gate.wait()
            return req

        server.register_service("gated", gated)
        client = RpcClient()
        try:
            # The caller gives up; its late response is ignored, the connection survives.
            first = asyncio.ensure_future(client.call(server.address, "gated", "gone"))
            assert await arrived.get() == "gone"
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            # More requests than the per-connection limit: the server stops
            # reading until slots free up, and every call still completes.
            calls = [
                asyncio.ensure_future(client.call(server.address, "gated", i)) for i in range(20)
            ]
            # The abandoned call still holds one of the two slots.
            assert await arrived.get() == 0
            for _ in range(20):
                await asyncio.sleep(0)  # give a (wrongly) admitted request a chance
            assert arrived.empty()
            gate.set()
            assert await asyncio.gather(*calls) == list(range(20))
            assert server.stats.bad_frames == 0
            assert len(server._conns) == 1
        finally:
            await client.close()
            await server.close()

    run(main)
