"""pyjraft.transport: the wire.

Framing and codec with strict validation of everything received
(`codec`, `framing`), an asyncio TCP transport shared by raft traffic of many
groups and by user RPC services (`TcpTransport`, `RpcClient`), with mutual
TLS naming node ids (`TlsConfig`, `pyjraft.transport.tls`) and bounds on
what a connection may cost (`ServerLimits`), and an
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
from pyjraft.transport.errors import (
    InsecureBindError,
    ProtocolError,
    RemoteError,
    RpcTimeoutError,
    TransportError,
)
from pyjraft.transport.framing import DEFAULT_MAX_FRAME_SIZE, VERSION, FrameDecoder, Kind
from pyjraft.transport.limits import DEFAULT_MAX_REQUEST_BYTES, ServerLimits
from pyjraft.transport.local import LocalNetwork, LocalTransport
from pyjraft.transport.tcp import RpcClient, TcpTransport
from pyjraft.transport.tls import Identity, Role, TlsConfig

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "DEFAULT_MAX_REQUEST_BYTES",
    "VERSION",
    "FrameDecoder",
    "Identity",
    "InsecureBindError",
    "Kind",
    "LocalNetwork",
    "LocalTransport",
    "MessageHandler",
    "ProtocolError",
    "RemoteError",
    "Role",
    "RpcClient",
    "RpcTimeoutError",
    "ServerLimits",
    "ServiceHandler",
    "TcpTransport",
    "TlsConfig",
    "Transport",
    "TransportError",
    "TransportStats",
    "decode_messages",
    "encode_messages",
    "format_address",
    "parse_address",
]
