"""pyjraft.transport: the wire.

Framing and codec with strict validation of everything received
(`codec`, `framing`), an asyncio TCP transport shared by raft traffic of many
groups and by user RPC services (`TcpTransport`, `RpcClient`), and an
in-process transport with fault injection for tests (`LocalNetwork`,
`LocalTransport`).
"""

from pyjraft.transport.codec import decode_messages, encode_messages
from pyjraft.transport.errors import ProtocolError, RemoteError, RpcTimeoutError, TransportError
from pyjraft.transport.framing import DEFAULT_MAX_FRAME_SIZE, VERSION, FrameDecoder, Kind

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "VERSION",
    "FrameDecoder",
    "Kind",
    "ProtocolError",
    "RemoteError",
    "RpcTimeoutError",
    "TransportError",
    "decode_messages",
    "encode_messages",
]
