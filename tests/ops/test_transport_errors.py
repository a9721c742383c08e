"""Transport errors counted by kind (`pyjraft.transport.reasons`) and exported
as labelled metrics."""

from __future__ import annotations

import asyncio

import msgpack  # type: ignore[import-untyped]
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from pyjraft.core.messages import Heartbeat
from pyjraft.ops.collector import RaftCollector
from pyjraft.testing.ports import free_ports
from pyjraft.transport import TcpTransport
from pyjraft.transport.base import TransportStats
from pyjraft.transport.codec import decode_messages
from pyjraft.transport.errors import ProtocolError
from pyjraft.transport.framing import HEADER, VERSION, Kind, parse_header
from pyjraft.transport.reasons import MAX_KINDS, bad_frame_kind, count_connection_error


def _reason(fn: object, *args: object) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args)  # type: ignore[operator]
    return info.value.reason


def test_real_reasons_map_to_short_kinds() -> None:
    assert bad_frame_kind(_reason(parse_header, HEADER.pack(1, VERSION, 1))) == "frame_length"
    assert bad_frame_kind(_reason(parse_header, HEADER.pack(9, 99, 1))) == "wire_version"
    assert bad_frame_kind(_reason(parse_header, HEADER.pack(9, VERSION, 77))) == "frame_kind"
    assert bad_frame_kind(_reason(decode_messages, b"\xc1")) == "malformed_msgpack"
    assert bad_frame_kind(_reason(decode_messages, msgpack.packb([[99, 1]]))) == "message"
    assert bad_frame_kind("AppendEntries.term: invalid -1") == "message_field"
    assert bad_frame_kind("something new") == "other"


def test_error_kinds_are_bounded() -> None:
    stats = TransportStats()
    for i in range(MAX_KINDS + 10):
        count_connection_error(stats, f"kind{i}", OSError())
    assert len(stats.errors) == MAX_KINDS + 1  # the rest went to "other"
    assert stats.errors["other"] == 10
    assert "errors" not in stats.as_dict()


def test_a_bad_frame_and_a_refused_connection_are_counted_and_exported() -> None:
    async def scenario() -> bytes:
        t = await TcpTransport.start("127.0.0.1", 0, backoff_min=0.01, backoff_max=0.02)
        try:
            host, port = t.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(HEADER.pack(1, VERSION, int(Kind.RAFT)))
            assert await reader.read() == b""  # hung up on
            writer.close()
            await writer.wait_closed()
            (dead,) = free_ports(1)
            t.send([Heartbeat("g", 1, t.address, f"127.0.0.1:{dead}", 0)])
            deadline = asyncio.get_running_loop().time() + 10
            while "connect:ConnectionRefusedError" not in t.stats.errors:
                assert asyncio.get_running_loop().time() < deadline, t.stats.errors
                await asyncio.sleep(0.01)
            assert t.stats.errors["bad_frame:frame_length"] == 1
            assert t.stats.bad_frames == 1
            registry = CollectorRegistry()
            registry.register(RaftCollector(list, lambda: [t]))
            return generate_latest(registry)
        finally:
            await t.close()

    text = asyncio.run(scenario()).decode()
    assert 'pyjraft_transport_bad_frames_total{endpoint="127.0.0.1:' in text
    assert 'reason="frame_length"} 1.0' in text
    assert 'kind="connect"' in text and 'error="ConnectionRefusedError"' in text
