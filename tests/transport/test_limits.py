"""Each limit of `ServerLimits` and of the services refuses what breaks it,
logs it and counts it, and leaves well-behaved connections alone."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from pyjraft.core.messages import Heartbeat, Message
from pyjraft.transport import (
    LocalNetwork,
    LocalTransport,
    RemoteError,
    RpcClient,
    ServerLimits,
    TcpTransport,
)
from pyjraft.transport.codec import encode_messages, encode_request
from pyjraft.transport.framing import HEADER, VERSION, Kind, encode_frame

from .conftest import eventually, run

MiB = 1 << 20


@pytest.fixture(autouse=True)
def quiet_transport_log() -> Iterator[None]:
    """Refusals are logged at WARNING by design; keep the test output readable."""
    logger = logging.getLogger("pyjraft.transport")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def header(kind: Kind, body_len: int) -> bytes:
    return HEADER.pack(body_len + 2, VERSION, kind)


async def echo(req: Any) -> Any:
    return req


@contextlib.asynccontextmanager
async def server(**limits: Any) -> AsyncIterator[TcpTransport]:
    t = await TcpTransport.start("127.0.0.1", 0, limits=ServerLimits(**limits))
    t.register_service("echo", echo)
    try:
        yield t
    finally:
        await t.close()


async def raw(
    t: TcpTransport, source: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = t.address.rsplit(":", 1)
    return await asyncio.open_connection(
        host, int(port), local_addr=(source, 0) if source else None
    )


async def hung_up(reader: asyncio.StreamReader) -> None:
    """Wait until the server closes the connection (whatever it sent first;
    an abort with our bytes unread is a reset)."""
    with contextlib.suppress(ConnectionResetError):
        while await reader.read(65536):
            pass


def test_a_63_mib_junk_request_is_refused_at_its_header() -> None:
    async def main() -> None:
        async with server() as t:
            reader, writer = await raw(t)
            writer.write(header(Kind.REQUEST, 63 * MiB) + b"\xc1" * 4096)
            await hung_up(reader)  # after 4 KiB, not 63 MiB
            writer.close()
            assert t.stats.oversized_frames == 1
            assert t._buffered == 0

    run(main)


def test_junk_in_a_big_services_request_is_refused_at_its_head() -> None:
    """Even under a service that takes 64 MiB, junk is refused once its
    first kilobyte is in, not after 63 MiB were buffered."""

    async def main() -> None:
        async with server() as t:
            t.register_service("big", echo, max_request_bytes=64 * MiB)
            reader, writer = await raw(t)
            writer.write(header(Kind.REQUEST, 63 * MiB) + b"\x93\x01\xc1" + b"\x00" * 4096)
            await hung_up(reader)
            writer.close()
            assert t.stats.bad_frames == 1
            assert t._buffered == 0

    run(main)


@pytest.mark.parametrize("size", [8 * 1024, 600 * 1024])
def test_a_request_over_its_services_limit_is_answered_and_skipped(size: int) -> None:
    """Small (one chunk) and large (many chunks: refused from its head, the
    rest skipped as it arrives): an error answer, the connection goes on."""

    async def main() -> None:
        async with server() as t:
            t.register_service("small", echo, max_request_bytes=1024)
            client = RpcClient()
            try:
                with pytest.raises(RemoteError, match="exceeds service 'small'"):
                    await client.call(t.address, "small", b"x" * size)
                assert await client.call(t.address, "small", b"ok") == b"ok"
                assert await client.call(t.address, "echo", b"y" * size) == b"y" * size
                assert t.stats.oversized_frames == 1 and t.stats.bad_frames == 0
                assert t._buffered == 0
            finally:
                await client.close()

    run(main)


def test_a_16_mib_frame_of_empty_arrays_does_not_explode_memory() -> None:
    n = 16 * MiB - 5
    body = b"\xdd" + struct.pack(">I", n) + b"\x90" * n

    async def main() -> int:
        async with server() as t:
            for kind in (Kind.RAFT, Kind.REQUEST):
                reader, writer = await raw(t)
                frame = header(kind, len(body)) + body
                tracemalloc.start()
                writer.write(frame)
                del frame
                await hung_up(reader)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                writer.close()
                # The frame itself is 16 MiB (and buffered once: the RAFT one
                # fits the 64 MiB frame limit); decoding it used to build a
                # 16-million-element tuple (1.2 GB for lists, in requests).
                assert peak < 3 * len(body), f"{kind.name}: peak {peak / MiB:.0f} MiB"
            assert t.stats.bad_frames == 1  # RAFT: refused by max_array_len
            assert t.stats.oversized_frames == 1  # REQUEST: over every service's limit
            return 0

    run(main, timeout=60)


def test_buffered_bytes_are_bounded_across_connections() -> None:
    async def main() -> None:
        async with server(max_buffered_bytes=1 * MiB) as t:
            t.register_service("big", echo, max_request_bytes=2 * MiB)
            body = encode_request(1, "big", b"a" * (700 * 1024))
            r1, w1 = await raw(t)
            w1.write(header(Kind.REQUEST, len(body)) + body[: len(body) // 2])
            await eventually(lambda: t._buffered > 0)
            r2, w2 = await raw(t)
            w2.write(header(Kind.REQUEST, len(body)) + body[:1000])
            await hung_up(r2)  # no room for a second 700 KiB frame
            w2.close()
            assert t.stats.buffer_limit_refusals == 1
            w1.write(body[len(body) // 2 :])  # the first one completes and is served
            frame = await r1.readexactly(6)
            assert frame[5] == Kind.RESPONSE
            w1.close()
            await eventually(lambda: t._buffered == 0)

    run(main)


def test_connections_are_bounded_in_all_and_per_address() -> None:
    async def main() -> None:
        async with server(max_connections=3, max_connections_per_ip=2) as t:
            keep = [await raw(t), await raw(t)]
            for r, w in keep:  # each gets served (and so is really accepted)
                w.write(encode_frame(Kind.REQUEST, encode_request(1, "echo", 1)))
                await r.readexactly(6)
            r3, w3 = await raw(t)  # a third from 127.0.0.1
            await hung_up(r3)
            w3.close()
            assert t.stats.refused_connections == 1
            keep.append(await raw(t, source="127.0.0.2"))
            r4, w4 = await raw(t, source="127.0.0.3")  # a fourth in all
            await hung_up(r4)
            w4.close()
            assert t.stats.refused_connections == 2
            for _, w in keep:
                w.close()
            await eventually(lambda: t._conn_count == 0)
            r5, w5 = await raw(t)
            w5.write(encode_frame(Kind.REQUEST, encode_request(1, "echo", 2)))
            await r5.readexactly(6)  # room again
            w5.close()

    run(main)


def test_a_silent_connection_is_closed() -> None:
    async def main() -> None:
        async with server(read_timeout=0.2) as t:
            reader, writer = await raw(t)
            await hung_up(reader)
            writer.close()
            assert t.stats.timed_out_connections == 1

    run(main)


def test_a_frame_trickled_too_slowly_is_closed() -> None:
    """Slow-loris: a frame that announces 10 KiB and dribbles it out."""

    async def main() -> None:
        async with server(read_timeout=0.2, min_read_rate=64 * 1024) as t:
            reader, writer = await raw(t)
            body = encode_request(1, "echo", b"z" * 10_000)
            writer.write(header(Kind.REQUEST, len(body)))
            closed = asyncio.ensure_future(hung_up(reader))
            for i in range(len(body)):  # far longer than the deadline allows
                if closed.done():
                    break
                writer.write(body[i : i + 1])
                await asyncio.sleep(0.01)
            await closed
            writer.close()
            assert t.stats.timed_out_connections == 1

    run(main)


def test_an_idle_connection_is_closed_but_not_one_with_a_request_in_service() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(req: Any) -> Any:
            await release.wait()
            return req

        async with server(read_timeout=0.1, idle_timeout=0.3) as t:
            t.register_service("slow", slow)
            busy = RpcClient()
            idle = RpcClient()
            try:
                call = asyncio.ensure_future(busy.call(t.address, "slow", 1, timeout=30))
                assert await idle.call(t.address, "echo", 2) == 2
                await eventually(lambda: t.stats.timed_out_connections == 1, timeout=10)
                release.set()
                assert await call == 1  # its connection outlived the idle one
            finally:
                await busy.close()
                await idle.close()

    run(main)


def test_request_bytes_in_flight_per_connection_are_bounded() -> None:
    async def main() -> None:
        release = asyncio.Event()
        started: list[int] = []

        async def hold(req: Any) -> Any:
            started.append(len(req))
            await release.wait()
            return len(req)

        async with server(max_request_bytes_in_flight=100_000) as t:
            t.register_service("hold", hold)
            client = RpcClient()
            try:
                calls = [
                    asyncio.ensure_future(client.call(t.address, "hold", b"h" * 60_000))
                    for _ in range(3)
                ]
                await eventually(lambda: len(started) == 2)
                # The second one took the connection over its budget: the third
                # waits in the socket until one is answered.
                for _ in range(20):
                    await asyncio.sleep(0)
                assert len(started) == 2
                release.set()
                assert await asyncio.gather(*calls) == [60_000] * 3
            finally:
                await client.close()

    run(main)


def test_a_flood_of_frames_yields_the_loop_between_batches() -> None:
    """Frames beyond max_frames_per_turn wait until the loop has run what
    else was ready, so timers (heartbeats) are not starved."""

    async def main() -> None:
        async with server(max_frames_per_turn=4) as t:
            order: list[str] = []
            loop = asyncio.get_running_loop()

            def handler(m: Message) -> None:
                if not order:
                    loop.call_soon(order.append, "loop ran")
                order.append(f"m{m.commit}")  # type: ignore[attr-defined]

            t.register_group("g", handler)
            frames = b"".join(
                encode_frame(Kind.RAFT, encode_messages([Heartbeat("g", 1, "a", "b", i, b"")]))
                for i in range(20)
            )
            _, writer = await raw(t)
            writer.write(frames)
            await eventually(lambda: len(order) == 21)
            assert order.index("loop ran") < 20, order
            assert [o for o in order if o != "loop ran"] == [f"m{i}" for i in range(20)]
            assert t.stats.turn_yields >= 1
            writer.close()

    run(main)


def test_an_empty_payload_and_bad_heads_are_protocol_errors() -> None:
    async def main() -> None:
        async with server() as t:
            for body in (b"\x93\x01", b"\x92\x01\xa4echo", b"\x93\xff\xa4echo\xc0"):
                reader, writer = await raw(t)
                writer.write(encode_frame(Kind.REQUEST, body))
                await hung_up(reader)
                writer.close()
            assert t.stats.bad_frames == 3
            assert msgpack.unpackb(encode_request(5, "echo", None)) == [5, "echo", None]

    run(main)


def test_the_client_retires_an_idle_connection_before_the_server_would() -> None:
    async def main() -> None:
        async with server() as t:
            client = RpcClient(max_idle=0.05)
            try:
                assert await client.call(t.address, "echo", 1) == 1
                first = set(t._conns)
                await asyncio.sleep(0.1)  # idle for longer than max_idle (uvloop's clock: ms)
                assert await client.call(t.address, "echo", 2) == 2
                await eventually(lambda: len(t._conns) == 1 and set(t._conns) != first)
            finally:
                await client.close()

    run(main)


def test_the_local_transport_enforces_service_limits_too(seed: int) -> None:
    async def main() -> None:
        net = LocalNetwork(random.Random(seed))
        a, b = LocalTransport(net, "a:1"), LocalTransport(net, "b:1")
        b.register_service("small", echo, max_request_bytes=100)
        try:
            assert await a.call("b:1", "small", b"x" * 10) == b"x" * 10
            with pytest.raises(RemoteError, match="exceeds service 'small'"):
                await a.call("b:1", "small", b"x" * 200)
        finally:
            await a.close()
            await b.close()

    run(main)


def test_a_client_that_never_reads_its_answers_is_closed() -> None:
    async def main() -> None:
        async def big(req: Any) -> Any:
            return b"r" * MiB

        async with server(idle_timeout=0.3, read_timeout=0.1) as t:
            t.register_service("big", big)
            _, writer = await raw(t)
            request = encode_frame(Kind.REQUEST, encode_request(1, "big", None))
            writer.write(request * 64)  # 64 MiB of answers it will not read
            await eventually(lambda: t.stats.timed_out_connections == 1, timeout=30)
            writer.close()

    run(main, timeout=60)


def test_a_request_flood_cannot_take_the_turns_of_raft_traffic() -> None:
    """Requests answered at once (say ``overloaded``) keep their connection
    readable; sharing one budget, they would take every turn before a peer's
    connection got one (a leader then misses its followers' acknowledgements
    and steps down). Raft traffic has a budget of its own."""

    async def main() -> None:
        async with server(max_frames_per_turn=4) as t:
            loop = asyncio.get_running_loop()
            served = 0
            delivered: list[int] = []

            def raft(i: int) -> bytes:
                return encode_frame(Kind.RAFT, encode_messages([Heartbeat("g", 1, "a", "b", i)]))

            def refuse(req: Any) -> asyncio.Future[Any]:
                nonlocal served
                served += 1
                if served == 4:
                    # The flood's first turn is spent: the peer's frame arrives
                    # while the flood has 396 requests buffered.
                    peer.write(raft(1))
                fut: asyncio.Future[Any] = loop.create_future()
                fut.set_result({"error": "overloaded"})
                return fut

            t.register_service("busy", refuse)
            t.register_group("g", lambda m: delivered.append(served))
            peer_reader, peer = await raw(t)
            peer.write(raft(0))  # a peer's connection: it has carried raft frames
            await eventually(lambda: len(delivered) == 1)
            client_reader, client = await raw(t)
            client.write(
                b"".join(
                    encode_frame(Kind.REQUEST, encode_request(i, "busy", None))
                    for i in range(1, 401)
                )
            )
            await eventually(lambda: len(delivered) == 2 and served == 400)
            assert delivered[1] <= 8, f"the peer waited for {delivered[1]} requests"
            assert t.stats.turn_yields >= 90
            for w in (peer, client):
                w.close()
            del peer_reader, client_reader

    run(main)


def test_connections_share_a_turn_so_a_single_request_is_not_kept_waiting() -> None:
    """Eight connections flood requests answered at once; a ninth sends one
    (a status query). Round robin over the flood, it waited for many turns
    of the others; with the turn shared among those who want more, it is
    served within a turn or two."""

    async def main() -> None:
        async with server(max_frames_per_turn=16) as t:
            loop = asyncio.get_running_loop()
            served = 0
            light_at: list[int] = []
            light: list[asyncio.StreamWriter] = []

            def busy(req: Any) -> asyncio.Future[Any]:
                nonlocal served
                served += 1
                if served == 200:  # every flooding connection has had to stop by now
                    light[0].write(encode_frame(Kind.REQUEST, encode_request(1, "light", None)))
                    light_at.append(served)
                fut: asyncio.Future[Any] = loop.create_future()
                fut.set_result(None)
                return fut

            def answer_light(req: Any) -> asyncio.Future[Any]:
                light_at.append(served)
                fut: asyncio.Future[Any] = loop.create_future()
                fut.set_result(None)
                return fut

            t.register_service("busy", busy)
            t.register_service("light", answer_light)
            _, light_writer = await raw(t)
            light.append(light_writer)
            flood = [await raw(t) for _ in range(8)]
            frames = b"".join(
                encode_frame(Kind.REQUEST, encode_request(i, "busy", None)) for i in range(400)
            )
            for _, w in flood:
                w.write(frames)
            await eventually(lambda: served == 3200 and len(light_at) == 2)
            waited = light_at[1] - light_at[0]
            assert waited <= 48, f"the single request waited for {waited} others"
            for _, w in [*flood, (None, light_writer)]:
                w.close()

    run(main)
