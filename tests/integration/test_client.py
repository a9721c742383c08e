"""`RaftClient` retry rules against scripted services on real `TcpTransport`s (in process)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from pyjraft.client import (
    DeadlineExceededError,
    RaftClient,
    RouteTable,
    ServiceError,
    UnknownOutcomeError,
    error_reply,
    ok_reply,
)
from pyjraft.transport import TcpTransport

pytestmark = pytest.mark.timeout(30)

Handler = Callable[[Any], Awaitable[Any]]


async def _servers(*handlers: Handler) -> list[TcpTransport]:
    out = []
    for h in handlers:
        t = await TcpTransport.start("127.0.0.1", 0)
        t.register_service("svc", h)
        out.append(t)
    return out


def _run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 20))


def _client(peers: list[str], **kw: Any) -> RaftClient:
    return RaftClient("g", peers, rng=random.Random(7), backoff_min=0.005, backoff_max=0.05, **kw)


def test_follows_not_leader_hint_and_caches_the_leader() -> None:
    async def main() -> None:
        calls: list[str] = []
        leader_addr: list[str] = []

        async def follower(req: Any) -> Any:
            calls.append("f")
            return error_reply("not_leader", "no", leader=leader_addr[0])

        async def leader(req: Any) -> Any:
            calls.append("l")
            return ok_reply(req + 1)

        f, lead = await _servers(follower, leader)
        leader_addr.append(lead.address)
        client = _client([f.address, lead.address])
        try:
            assert await client.call("svc", 41, deadline=5) == 42
            assert client.leader == lead.address
            assert await client.call("svc", 1, deadline=5) == 2
            assert calls == ["f", "l", "l"]
            assert client.stats["redirects"] == 1
        finally:
            await client.close()
            await f.close()
            await lead.close()

    _run(main)


def test_a_forged_hint_to_a_stranger_is_not_followed() -> None:
    """A member relays a hint naming an address outside the peer set (a forged
    heartbeat fooled it): the client never calls the stranger, which would
    "acknowledge" writes it never replicated, and finds the real leader."""

    async def main() -> None:
        stranger_calls: list[Any] = []
        hint: list[str] = []

        async def fooled(req: Any) -> Any:
            return error_reply("not_leader", "no", leader=hint[0])

        async def stranger(req: Any) -> Any:
            stranger_calls.append(req)
            return ok_reply("acknowledged by a stranger")

        async def leader(req: Any) -> Any:
            return ok_reply(req + 1)

        f, s, lead = await _servers(fooled, stranger, leader)
        hint.append(s.address)
        client = _client([f.address, lead.address])
        try:
            for i in range(5):
                assert await client.call("svc", i, deadline=5) == i + 1
            assert stranger_calls == []
            assert client.stats["refused_hints"] >= 1
            assert s.address not in client.routes.peers_of("g")
            assert client.leader == lead.address
        finally:
            await client.close()
            for t in (f, s, lead):
                await t.close()

    _run(main)


@pytest.fixture
def refused() -> Iterator[list[str]]:
    """Two addresses that refuse connections: bound, never listening, so no other
    process can take the port meanwhile (a freed "free port" can be taken)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        yield [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    finally:
        for s in socks:
            s.close()


def test_retries_overloaded_and_refused_connections_then_succeeds(refused: list[str]) -> None:
    async def main() -> None:
        n = 0

        async def flaky(req: Any) -> Any:
            nonlocal n
            n += 1
            return error_reply("overloaded", "busy") if n < 3 else ok_reply("done")

        (srv,) = await _servers(flaky)
        dead = refused[0]
        client = _client([dead, srv.address])
        try:
            assert await client.call("svc", None, deadline=5) == "done"
            assert n == 3
        finally:
            await client.close()
            await srv.close()

    _run(main)


def test_unknown_outcome_is_surfaced_not_retried() -> None:
    async def main() -> None:
        n = 0

        async def lost(req: Any) -> Any:
            nonlocal n
            n += 1
            return error_reply("unknown_outcome", "leadership lost")

        (srv,) = await _servers(lost)
        client = _client([srv.address])
        try:
            with pytest.raises(UnknownOutcomeError):
                await client.call("svc", ["incr", 1], deadline=2)
            assert n == 1
            # An idempotent call is retried until the deadline instead.
            with pytest.raises(DeadlineExceededError):
                await client.call("svc", ["get"], deadline=0.3, idempotent=True)
            assert n > 2
        finally:
            await client.close()
            await srv.close()

    _run(main)


def test_reply_timeout_is_unknown_outcome_unless_idempotent() -> None:
    async def main() -> None:
        n = 0

        async def slow_once(req: Any) -> Any:
            nonlocal n
            n += 1
            if n in {1, 2}:
                await asyncio.sleep(1)
            return ok_reply(n)

        (srv,) = await _servers(slow_once)
        client = _client([srv.address], timeout=0.1)
        try:
            with pytest.raises(UnknownOutcomeError):
                await client.call("svc", None, deadline=2)
            assert await client.call("svc", None, deadline=2, idempotent=True) == 3
        finally:
            await client.close()
            await srv.close()

    _run(main)


def test_deadline_exceeded_when_nothing_answers(refused: list[str]) -> None:
    async def main() -> None:
        dead = refused
        client = _client(dead)
        try:
            with pytest.raises(DeadlineExceededError) as info:
                await client.call("svc", None, deadline=0.3)
            assert info.value.last_error is not None
            assert client.stats["attempts"] > 2
        finally:
            await client.close()

    _run(main)


def test_application_errors_and_failing_handlers_are_service_errors() -> None:
    async def main() -> None:
        async def picky(req: Any) -> Any:
            if req == "boom":
                raise RuntimeError("handler bug")
            return error_reply("invalid_request", "bad input")

        (srv,) = await _servers(picky)
        client = _client([srv.address])
        try:
            with pytest.raises(ServiceError) as info:
                await client.call("svc", "x", deadline=2)
            assert info.value.code == "invalid_request"
            with pytest.raises(ServiceError) as info:
                await client.call("svc", "boom", deadline=2)
            assert info.value.code == "remote_error"
        finally:
            await client.close()
            await srv.close()

    _run(main)


def test_route_table() -> None:
    rt = RouteTable()
    rt.update_configuration("g", ["a:1", "b:1", "a:1"])
    assert rt.peers_of("g") == ["a:1", "b:1"]
    assert [rt.next_target("g") for _ in range(3)] == ["a:1", "b:1", "a:1"]
    assert not rt.update_leader("g", "c:1")  # a stranger is never cached nor added
    assert rt.leader_of("g") == "" and "c:1" not in rt.peers_of("g")
    assert rt.update_leader("g", "a:1")
    rt.forget_leader("g", "b:1")
    assert rt.leader_of("g") == "a:1"
    rt.update_configuration("g", ["a:1", "b:1", "c:1"])  # as a member reports it
    assert rt.update_leader("g", "c:1") and rt.leader_of("g") == "c:1"
    rt.forget_leader("g")
    assert rt.leader_of("g") == ""
    rt.update_leader("g", "b:1")
    rt.update_configuration("g", ["a:1"])
    assert rt.leader_of("g") == ""
    with pytest.raises(KeyError):
        rt.leader_of("other")
