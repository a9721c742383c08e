"""TcpTransport and RpcClient on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from pyjraft.core.messages import AppendEntries, Heartbeat, Message, VoteRequest
from pyjraft.core.types import Entry, EntryType
from pyjraft.transport import (
    ProtocolError,
    RemoteError,
    RpcClient,
    RpcTimeoutError,
    TcpTransport,
    TransportError,
    server_conn,
)
from pyjraft.transport.codec import (
    decode_response,
    encode_messages,
    encode_request,
    encode_response,
)
from pyjraft.transport.framing import HEADER, VERSION, Kind, encode_frame

from .conftest import eventually, run


class Inbox:
    """Collects delivered messages; `get` awaits the next one."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[Message] = asyncio.Queue()

    def __call__(self, m: Message) -> None:
        self.q.put_nowait(m)

    async def get(self, timeout: float = 5.0) -> Message:
        return await asyncio.wait_for(self.q.get(), timeout)

    async def take(self, n: int, timeout: float = 5.0) -> list[Message]:
        return [await self.get(timeout) for _ in range(n)]


def hb(group: str, src: str, dst: str, commit: int = 0) -> Heartbeat:
    return Heartbeat(group, 1, src, dst, commit, b"c%d" % commit)


@contextlib.asynccontextmanager
async def scripted_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, RpcClient]]:
    """A raw TCP server running ``serve`` per connection, and an `RpcClient`:
    yields the server's address and the client; closes both."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RpcClient()
    try:
        yield f"127.0.0.1:{port}", client
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def start(seed: int = 0, **kw: Any) -> TcpTransport:
    return await TcpTransport.start(
        "127.0.0.1", 0, rng=random.Random(seed), backoff_min=0.01, backoff_max=0.1, **kw
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- raft traffic -----------------------------------------------------------------


def test_raft_messages_two_groups_both_ways(seed: int) -> None:
    async def main() -> None:
        a, b = await start(seed), await start(seed + 1)
        try:
            a1, b1, b2 = Inbox(), Inbox(), Inbox()
            a.register_group("g1", a1)
            b.register_group("g1", b1)
            b.register_group("g2", b2)
            ents = tuple(Entry(1, i, EntryType.NORMAL, b"x" * i) for i in range(1, 4))
            msgs: list[Message] = [
                hb("nope", a.address, b.address),  # unknown group: dropped, counted
                VoteRequest("g1", 2, a.address, b.address, 5, 1, True),
                AppendEntries("g2", 2, a.address, b.address, 0, 0, ents, 1),
                hb("g1", a.address, b.address, 7),
            ]
            a.send(msgs)
            assert await b1.take(2) == [msgs[1], msgs[3]]
            assert await b2.get() == msgs[2]
            assert b.stats.unknown_group == 1
            reply = hb("g1", b.address, a.address, 9)
            b.send([reply])
            assert await a1.get() == reply
            assert a.stats.messages_out == 4
            assert b.stats.messages_in == 3
            b.unregister_group("g2")
            a.send([hb("g2", a.address, b.address), hb("g1", a.address, b.address, 1)])
            await b1.get()
            assert b.stats.unknown_group == 2
        finally:
            await a.close()
            await b.close()

    run(main)


def test_order_preserved_and_pipelined(seed: int) -> None:
    async def main() -> None:
        a, b = await start(seed, queue_messages=100_000), await start(seed)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            n = 5000
            for lo in range(0, n, 250):
                a.send([hb("g", a.address, b.address, i) for i in range(lo, lo + 250)])
                if lo % 1000 == 0:
                    await asyncio.sleep(0)  # let the writer run mid-stream
            got = [m.commit for m in await inbox.take(n)]  # type: ignore[union-attr]
            assert got == list(range(n))
            # pipelining: far fewer frames than messages
            assert a.stats.frames_out < n / 5
        finally:
            await a.close()
            await b.close()

    run(main)


def test_bounded_queue_drops_and_counts(seed: int) -> None:
    async def main() -> None:
        a, b = await start(seed, queue_messages=10), await start(seed)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            a.send([hb("g", a.address, b.address, i) for i in range(100)])
            assert a.stats.dropped_sends == 90
            assert [m.commit for m in await inbox.take(10)] == list(range(10))  # type: ignore[union-attr]
        finally:
            await a.close()
            await b.close()

    run(main)


def test_large_batches_split_into_frames_and_oversize_dropped(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        a = await start(seed, max_frame_size=4096)
        b = await start(seed, max_frame_size=4096)
        try:
            inbox = Inbox()
            b.register_group("g", inbox)

            def ae(i: int, size: int) -> AppendEntries:
                e = (Entry(1, i + 1, EntryType.NORMAL, b"z" * size),)
                return AppendEntries("g", 1, a.address, b.address, i, 1, e, 0)

            msgs = [ae(i, 1000) for i in range(10)]
            a.send([*msgs[:5], ae(99, 5000), *msgs[5:]])
            assert await inbox.take(10) == msgs
            assert a.stats.dropped_sends == 1
            assert a.stats.frames_out >= 3
        finally:
            await a.close()
            await b.close()

    with caplog.at_level(logging.WARNING, "pyjraft.transport"):
        run(main)
    assert "exceed the frame limit" in caplog.text


def test_handler_exception_keeps_connection(seed: int) -> None:
    async def main() -> None:
        a, b = await start(seed), await start(seed)
        try:
            inbox = Inbox()

            def handler(m: Message) -> None:
                if m.commit == 0:  # type: ignore[union-attr]
                    raise RuntimeError("boom")
                inbox(m)

            b.register_group("g", handler)
            a.send([hb("g", a.address, b.address, 0), hb("g", a.address, b.address, 1)])
            assert (await inbox.get()).commit == 1  # type: ignore[union-attr]
            assert b.stats.handler_errors == 1
            assert b.stats.bad_frames == 0
        finally:
            await a.close()
            await b.close()

    logging.getLogger("pyjraft.transport").disabled = True
    try:
        run(main)
    finally:
        logging.getLogger("pyjraft.transport").disabled = False


def test_send_to_dead_peer_neither_blocks_nor_raises(seed: int) -> None:
    async def main() -> None:
        a = await start(seed)
        dead = f"127.0.0.1:{free_port()}"
        try:
            for i in range(50):
                a.send([hb("g", a.address, dead, i)])
            a.send([hb("g", a.address, "not-an-address")])
            a.send([hb("g", a.address, "[::1]:99999")])
            assert a.stats.dropped_sends == 2
            # Connections are lazy: one failed attempt drops what was queued...
            await eventually(lambda: a.stats.connect_failures >= 1)
            assert a.stats.dropped_sends == 52
            # ...and the next send tries again.
            a.send([hb("g", a.address, dead)])
            await eventually(lambda: a.stats.connect_failures >= 2)
        finally:
            await a.close()
        a.send([hb("g", "x", dead)])  # after close: dropped, no error
        assert a.stats.dropped_sends >= 53

    run(main)


def test_reconnect_after_peer_restarts_on_same_port(seed: int) -> None:
    async def main() -> None:
        a, b = await start(seed), await start(seed)
        port = int(b.address.rsplit(":", 1)[1])
        try:
            inbox = Inbox()
            b.register_group("g", inbox)
            a.send([hb("g", a.address, b.address, 1)])
            assert (await inbox.get()).commit == 1  # type: ignore[union-attr]
            await b.close()
            # While b is down, sends are dropped quietly.
            a.send([hb("g", a.address, b.address, 2)])
            b = await TcpTransport.start("127.0.0.1", port)
            inbox2 = Inbox()
            b.register_group("g", inbox2)
            # Raft retransmits; so do we, until the new server hears us.
            for i in range(3, 1000):
                a.send([hb("g", a.address, b.address, i)])
                try:
                    m = await inbox2.get(timeout=0.05)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("never reconnected")
            assert m.commit >= 2  # type: ignore[union-attr]
            assert a.stats.reconnects >= 1
            assert a.peers == [b.address]
            await a.remove_peer(b.address)
            assert a.peers == []
            a.send([hb("g", a.address, b.address, 5000)])
            while (await inbox2.get()).commit != 5000:  # type: ignore[union-attr]
                pass
        finally:
            await a.close()
            await b.close()

    run(main)


def test_close_does_not_wait_for_a_peer_that_never_reads(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were close() to wait for buffered data to drain, this would hang.
    monkeypatch.setattr(server_conn, "_CLOSE_GRACE", 3600.0)

    async def main() -> None:
        accepted = asyncio.Event()
        conns: list[asyncio.StreamWriter] = []

        async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)
            accepted.set()

        server = await asyncio.start_server(deaf, "127.0.0.1", 0, limit=1024)
        port = server.sockets[0].getsockname()[1]
        a = await start(seed, queue_bytes=1 << 30)
        try:
            dst = f"127.0.0.1:{port}"
            big = tuple(Entry(1, i + 1, EntryType.NORMAL, bytes(1 << 20)) for i in range(4))
            for _ in range(16):  # 64 MiB: far more than socket buffers hold
                a.send([AppendEntries("g", 1, a.address, dst, 0, 0, big, 0)])
            await accepted.wait()
            await eventually(lambda: a.stats.frames_out > 0)
        finally:
            await a.close()
            for w in conns:
                w.transport.abort()
            server.close()
            await server.wait_closed()

    run(main, timeout=20)


# -- RPC services ------------------------------------------------------------------------


def test_rpc_concurrent_calls_errors_and_timeouts(seed: int) -> None:
    async def main() -> None:
        server = await start(seed)
        gate = asyncio.Event()

        async def echo(req: Any) -> Any:
            return {"echo": req}

        async def fail(req: Any) -> Any:
            raise ValueError(f"bad request {req}")

        async def gated(req: Any) -> Any:
            await gate.wait()
            return req

        async def unencodable(req: Any) -> Any:
            return object()

        async def forever(req: Any) -> Any:
            await asyncio.Event().wait()

        for name, h in [
            ("echo", echo),
            ("fail", fail),
            ("gated", gated),
            ("unencodable", unencodable),
            ("forever", forever),
        ]:
            server.register_service(name, h)
        client = RpcClient()
        addr = server.address
        try:
            # Many calls in flight at once, one connection.
            results = await asyncio.gather(
                *(client.call(addr, "echo", [i, b"b", "s"]) for i in range(100))
            )
            assert results == [{"echo": [i, b"b", "s"]} for i in range(100)]
            assert len(server._conns) == 1
            # A slow call does not hold up a fast one behind it.
            slow = asyncio.ensure_future(client.call(addr, "gated", "late"))
            assert await client.call(addr, "echo", 1) == {"echo": 1}
            assert not slow.done()
            gate.set()
            assert await slow == "late"
            # Handler errors become RemoteError; the connection stays up.
            with pytest.raises(RemoteError, match="ValueError: bad request 7"):
                await client.call(addr, "fail", 7)
            with pytest.raises(RemoteError, match="unknown service"):
                await client.call(addr, "nope", None)
            with pytest.raises(RemoteError, match="TypeError"):
                await client.call(addr, "unencodable", None)
            with pytest.raises(RpcTimeoutError) as info:
                await client.call(addr, "forever", None, timeout=0.05)
            assert isinstance(info.value, asyncio.TimeoutError)
            assert await client.call(addr, "echo", 2) == {"echo": 2}
            assert len(server._conns) == 1
            assert server.stats.bad_frames == 0
            assert server.stats.request_errors == 3
            with pytest.raises(TypeError):
                await client.call(addr, "echo", object())
            # The transport's own client works too.
            assert await server.call(addr, "echo", 3) == {"echo": 3}
        finally:
            await client.close()
            await server.close()

    run(main)


def test_rpc_connect_failure_and_server_going_away(seed: int) -> None:
    async def main() -> None:
        client = RpcClient()
        try:
            with pytest.raises(TransportError, match="cannot connect"):
                await client.call(f"127.0.0.1:{free_port()}", "echo", 1)
            with pytest.raises(TransportError):
                await client.call("bogus", "echo", 1)
            server = await start(seed)
            started = asyncio.Event()

            async def hang(req: Any) -> Any:
                started.set()
                await asyncio.Event().wait()

            server.register_service("hang", hang)
            call = asyncio.ensure_future(client.call(server.address, "hang", None))
            await started.wait()
            await server.close()
            with pytest.raises(TransportError, match="closed"):
                await call
        finally:
            await client.close()
        with pytest.raises(TransportError):
            await client.call("127.0.0.1:1", "echo", 1)

    run(main)


# -- bad input ---------------------------------------------------------------------------

BAD_STREAMS = {
    "garbage": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "truncated": HEADER.pack(100, VERSION, Kind.RAFT) + b"\x90" * 10,
    "truncated_header": b"\x00\x00\x00",
    "oversize": HEADER.pack(2**31, VERSION, Kind.RAFT),
    "bad_version": encode_frame(Kind.RAFT, b"\x90", version=VERSION + 1),
    "unknown_kind": HEADER.pack(3, VERSION, 77) + b"\x90",
    "too_short": HEADER.pack(1, VERSION, Kind.RAFT),
    "invalid_message": encode_frame(Kind.RAFT, b"\x91\x96\x00\xa1g\xff\xa1a\xa1b\x01"),  # term -1
    "bad_msgpack": encode_frame(Kind.RAFT, b"\xc1"),
    "response_to_server": encode_frame(Kind.RESPONSE, encode_response(1, True, None)),
    "bad_request": encode_frame(Kind.REQUEST, b"\x92\x01\xa1s"),
}


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_bad_input_closes_only_that_connection(
    name: str, seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        a, b = await start(seed), await start(seed)
        client = RpcClient()
        try:
            inbox = Inbox()
            b.register_group("g", inbox)

            async def echo(req: Any) -> Any:
                return req

            b.register_service("echo", echo)
            # A well-behaved connection that exists before the attack...
            a.send([hb("g", a.address, b.address, 1)])
            await inbox.get()
            host, port = b.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            good = encode_frame(Kind.RAFT, encode_messages([hb("g", "raw", b.address, 2)]))
            writer.write(good + BAD_STREAMS[name])
            if name.startswith("truncated"):
                writer.write_eof()
            assert await reader.read() == b""  # the server hung up on us
            writer.close()
            await writer.wait_closed()
            # ...frames before the bad one were still served...
            assert (await inbox.get()).src == "raw"
            assert b.stats.bad_frames == 1
            # ...the old connection and new clients are served.
            a.send([hb("g", a.address, b.address, 3)])
            assert (await inbox.get()).commit == 3  # type: ignore[union-attr]
            assert await client.call(b.address, "echo", name) == name
            assert b.stats.bad_frames == 1
        finally:
            await client.close()
            await a.close()
            await b.close()

    with caplog.at_level(logging.WARNING, "pyjraft.transport"):
        run(main)
    assert "closing connection from 127.0.0.1:" in caplog.text


def test_bad_response_closes_client_connection(seed: int) -> None:
    """A server answering garbage fails the call with TransportError, not a crash."""

    async def main() -> None:
        async def evil(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(6)
            writer.write(encode_frame(Kind.RESPONSE, b"\x93\x01\x05\xc0"))  # status 5
            await reader.read()
            writer.close()

        async with scripted_server(evil) as (address, client):
            with pytest.raises(TransportError, match="protocol error"):
                await client.call(address, "x", None)
            assert client.stats.bad_frames == 1

    logging.getLogger("pyjraft.transport").disabled = True
    try:
        run(main)
    finally:
        logging.getLogger("pyjraft.transport").disabled = False


def test_protocol_error_reason_is_text() -> None:
    assert ProtocolError("why").reason == "why"
    assert encode_request(1, "s", None)


def test_requests_then_half_close_get_every_answer_in_order(seed: int) -> None:
    """Answers are written once per loop turn; a client that sends its requests
    and half-closes still gets all of them before the server closes."""

    async def main() -> None:
        b = await start(seed)
        try:

            async def echo(req: Any) -> Any:
                await asyncio.sleep(0.001 * (req % 3))  # finish out of order
                return req

            b.register_service("echo", echo)
            host, port = b.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(
                b"".join(
                    encode_frame(Kind.REQUEST, encode_request(i, "echo", i)) for i in range(50)
                )
            )
            writer.write_eof()
            data = await reader.read()  # until the server closes
            writer.close()
            ids = []
            pos = 0
            while pos < len(data):
                length, _, kind = HEADER.unpack_from(data, pos)
                assert kind == Kind.RESPONSE
                end = pos + HEADER.size + length - 2  # length counts version and kind
                rpc_id, ok, payload = decode_response(data[pos + HEADER.size : end])
                assert ok and payload == rpc_id
                ids.append(rpc_id)
                pos = end
            assert sorted(ids) == list(range(50))
            assert b.stats.frames_out >= 50
        finally:
            await b.close()

    run(main)


def test_rpc_handlers_returning_futures_are_answered_without_a_task(seed: int) -> None:
    async def main() -> None:
        server = await start(seed)
        loop = asyncio.get_running_loop()
        held: list[asyncio.Future[Any]] = []

        def later(req: Any) -> asyncio.Future[Any]:
            fut: asyncio.Future[Any] = loop.create_future()
            held.append(fut)
            return fut

        def fails_at_once(req: Any) -> asyncio.Future[Any]:
            raise ValueError(f"refused {req}")

        server.register_service("later", later)
        server.register_service("fails_at_once", fails_at_once)
        client = RpcClient()
        addr = server.address
        try:
            calls = [asyncio.ensure_future(client.call(addr, "later", i)) for i in range(20)]
            await eventually(lambda: len(held) == 20)
            (conn,) = server._conns
            assert not any(isinstance(r, asyncio.Task) for r in conn.requests)
            for i, fut in enumerate(held):
                if i % 2:
                    fut.set_exception(KeyError(i))
                else:
                    fut.set_result({"n": i})
            for i, call in enumerate(calls):
                if i % 2:
                    with pytest.raises(RemoteError, match="KeyError"):
                        await call
                else:
                    assert await call == {"n": i}
            with pytest.raises(RemoteError, match="ValueError: refused 5"):
                await client.call(addr, "fails_at_once", 5)
            await eventually(lambda: not conn.requests)
            # A client gone mid-call: its future is not cancelled (it may be
            # shared); the half-closed connection is closed once it completes.
            held.clear()
            lost = asyncio.ensure_future(client.call(addr, "later", "x"))
            await eventually(lambda: len(held) == 1)
            await client.close()
            with pytest.raises(TransportError):
                await lost
            await eventually(lambda: conn.eof)  # the server saw the client go
            assert not held[0].cancelled()
            held[0].set_result("too late")
            await eventually(lambda: not server._conns)
            assert server.stats.request_errors == 11
        finally:
            await client.close()
            await server.close()

    run(main)


def test_rpc_timeouts_share_one_timer_per_connection(seed: int) -> None:
    async def main() -> None:
        server = await start(seed)

        async def echo(req: Any) -> Any:
            return req

        async def forever(req: Any) -> Any:
            await asyncio.Event().wait()

        server.register_service("echo", echo)
        server.register_service("forever", forever)
        client = RpcClient()
        addr = server.address
        try:
            assert await client.call(addr, "echo", 0) == 0
            (conn,) = client._conns.values()
            # Each call times out after its own timeout, whatever the order.
            timeouts = [0.3, 0.05, 0.15]
            outcomes = await asyncio.gather(
                *(client.call(addr, "forever", t, timeout=t) for t in timeouts),
                return_exceptions=True,
            )
            for t, out in zip(timeouts, outcomes, strict=True):
                assert isinstance(out, RpcTimeoutError), out
                assert f"after {t} s" in str(out)
            # Answered calls leave no timers behind: the heap stays bounded.
            for _ in range(10):
                await asyncio.gather(
                    *(client.call(addr, "echo", i, timeout=60) for i in range(100))
                )
                assert len(conn.deadlines) <= 64 + 2 * 100 + 1
            assert await client.call(addr, "echo", "still up") == "still up"
        finally:
            await client.close()
            await server.close()

    run(main)


def test_rpc_server_hanging_up_inside_a_frame_is_a_bad_frame(seed: int) -> None:
    async def main() -> None:
        async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(6)  # a request header at least
            frame = encode_frame(Kind.RESPONSE, encode_response(1, True, "x" * 100))
            writer.write(frame[:20])
            await writer.drain()
            writer.close()

        async with scripted_server(half_answer) as (address, client):
            with pytest.raises(TransportError, match="inside a frame"):
                await client.call(address, "echo", None)
            assert client.stats.bad_frames == 1

    run(main)
