"""pyjraft.transport: the wire.

Framing and codec with strict validation of everything received
(`codec`, `framing`), an asyncio TCP transport shared by raft traffic of many
groups and by user RPC services (`TcpTransport`, `RpcClient`), and an
in-process transport with fault injection for tests (`LocalNetwork`,
`LocalTransport`).
"""

from pyjraft.transport.base import (
    MessageHandler,
    ServiceHandler,
    Transport,
    TransportStats,
    format_address,
    parse_address,
)
from pyjraft.transport.codec import decode_messages, encode_messages
from pyjraft.transport.errors import ProtocolError, RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.framing import DEFAULT_MAX_FRAME_SIZE, VERSION, FrameDecoder, Kind
from pyjraft.transport.local import LocalNetwork, LocalTransport
from pyjraft.transport.tcp import RpcClient, TcpTransport

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "VERSION",
    "FrameDecoder",
    "Kind",
    "LocalNetwork",
    "LocalTransport",
    "MessageHandler",
    "ProtocolError",
    "RemoteError",
    "RpcClient",
    "RpcTimeoutError",
    "ServiceHandler",
    "TcpTransport",
    "Transport",
    "TransportError",
    "TransportStats",
    "decode_messages",
    "encode_messages",
    "format_address",
    "parse_address",
]
