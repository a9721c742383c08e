"""What every transport shares: handler types, counters, address parsing."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pyjraft.core.messages import Message
from pyjraft.transport.limits import DEFAULT_MAX_REQUEST_BYTES
from pyjraft.transport.tls import Identity

MessageHandler = Callable[[Message], None]
"""Receives each inbound raft message of one group, on the event loop."""

ServiceHandler = Callable[[Any], Awaitable[Any]]
"""Serves one RPC: gets the decoded msgpack request, returns an awaitable of a
msgpack-able response. An ``async def`` handler runs in a task of its own per
request; a plain function returning an `asyncio.Future` (say, the one
`Node.apply` returns) is answered from the future's done callback, with no
task: the cheaper form for a handler that only forwards."""

CallerServiceHandler = Callable[[Any, Identity | None], Awaitable[Any]]
"""A `ServiceHandler` that is also told who calls: the identity the caller's
TLS certificate names, or None when the connection is not authenticated
(plaintext). For services that authorize (the admin service); registered
with `HandlerRegistry.register_caller_service`."""


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport (or RPC client). Plain ints, only ever increased."""

    frames_in: int = 0
    """Valid frames received."""
    frames_out: int = 0
    """Frames written."""
    bytes_in: int = 0
    """Bytes of valid frames received, headers included."""
    bytes_out: int = 0
    """Bytes written, headers included."""
    messages_in: int = 0
    """Raft messages received and handed to a group handler."""
    messages_out: int = 0
    """Raft messages written to a connection (or delivered, for the local transport)."""
    bad_frames: int = 0
    """Connections closed because of bytes that were not a valid frame or message."""
    dropped_sends: int = 0
    """Raft messages dropped on the sending side: queue full, peer unreachable,
    invalid address, message too large, transport closed, or injected fault."""
    unknown_group: int = 0
    """Inbound raft messages for a group nobody registered; dropped."""
    handler_errors: int = 0
    """Exceptions raised by raft message handlers (logged, connection kept)."""
    reconnects: int = 0
    """Outbound connections re-established after a previous one was lost."""
    connect_failures: int = 0
    """Failed attempts to open an outbound connection."""
    requests_in: int = 0
    """RPC requests received by services."""
    request_errors: int = 0
    """RPC requests answered with an error (handler raised or unknown service)."""
    spoofed_messages: int = 0
    """Inbound raft messages dropped because their ``src`` is not the node
    their connection's certificate names (TLS only)."""
    raft_from_clients: int = 0
    """Connections closed for sending a raft frame with a client certificate."""
    auth_failures: int = 0
    """Inbound connections closed because the TLS handshake failed or the
    certificate names no pyjraft identity."""
    server_identity_mismatches: int = 0
    """Outbound connections dropped because the server's certificate does not
    name the node we meant to reach."""
    refused_connections: int = 0
    """Accepted connections closed at once: too many in all or from one address."""
    oversized_frames: int = 0
    """Frames refused for their size: over the kind's limit or the service's
    ``max_request_bytes`` (requests get an error answer, the rest close)."""
    buffer_limit_refusals: int = 0
    """Connections closed because their next frame did not fit in the
    server's budget of buffered bytes."""
    timed_out_connections: int = 0
    """Connections closed as silent, idle, too slow to send a frame, or not
    reading our answers."""
    fd_exhausted: int = 0
    """``EMFILE``/``ENFILE`` met accepting or connecting."""
    accept_pauses: int = 0
    """Times the server stopped accepting to keep its file-descriptor reserve."""
    turn_yields: int = 0
    """Times a connection stopped reading to let the event loop run (per-turn cap)."""
    errors: dict[str, int] = field(default_factory=dict)
    """Bad frames and connection errors by kind (`pyjraft.transport.reasons`)."""

    def as_dict(self) -> dict[str, int]:
        """The integer counters as a plain dict (a copy; ``errors`` is apart)."""
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if f.name != "errors"}


def parse_address(addr: str) -> tuple[str, int]:
    """Split ``"host:port"`` (or ``"[v6]:port"``) into host and port.

    Raises `ValueError` for anything else.
    """
    host, sep, port_s = addr.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"not a host:port address: {addr!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {addr!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """The inverse of `parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class HandlerRegistry:
    """The raft group handlers and RPC services of one endpoint; both transports
    inherit it."""

    def __init__(self) -> None:
        self._groups: dict[str, MessageHandler] = {}
        self._services: dict[str, ServiceHandler] = {}
        # Services told who calls: looked up only when ``_services`` has no
        # such name, so the other services' path pays nothing for them.
        self._caller_services: dict[str, CallerServiceHandler] = {}
        self._service_limits: dict[str, int] = {}

    def register_group(self, group: str, handler: MessageHandler) -> None:
        """Deliver inbound raft messages of ``group`` to ``handler``."""
        self._groups[group] = handler

    def unregister_group(self, group: str) -> None:
        """Stop delivering ``group``'s messages; later ones count as unknown."""
        self._groups.pop(group, None)

    def register_service(
        self,
        name: str,
        handler: ServiceHandler,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        """Serve RPC requests for service ``name`` with ``handler``.

        A request whose msgpack encoding exceeds ``max_request_bytes``
        (default 1 MiB) is answered with an error without being decoded, and
        a request frame larger than every service's limit closes its
        connection: set it to what the service really needs.
        """
        if max_request_bytes < 1:
            raise ValueError("max_request_bytes must be >= 1")
        self._caller_services.pop(name, None)
        self._services[name] = handler
        self._service_limits[name] = max_request_bytes

    def register_caller_service(
        self,
        name: str,
        handler: CallerServiceHandler,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        """As `register_service`, but ``handler(request, caller)`` is also given
        the caller's identity (`CallerServiceHandler`), to authorize."""
        if max_request_bytes < 1:
            raise ValueError("max_request_bytes must be >= 1")
        self._services.pop(name, None)
        self._caller_services[name] = handler
        self._service_limits[name] = max_request_bytes

    def unregister_service(self, name: str) -> None:
        """Stop serving ``name``; later requests get an error response."""
        self._services.pop(name, None)
        self._caller_services.pop(name, None)
        self._service_limits.pop(name, None)


class Transport(Protocol):
    """What the runtime needs of a transport; `TcpTransport` and
    `LocalTransport` both provide it."""

    stats: TransportStats

    @property
    def address(self) -> str:
        """This endpoint's address, the ``dst`` peers send to."""
        ...

    def register_group(self, group: str, handler: MessageHandler) -> None:
        """Deliver inbound raft messages of ``group`` to ``handler``."""
        ...

    def unregister_group(self, group: str) -> None:
        """Stop delivering ``group``'s messages."""
        ...

    def register_service(
        self, name: str, handler: ServiceHandler, max_request_bytes: int = ...
    ) -> None:
        """Serve RPC calls to ``name`` with ``handler`` (requests up to
        ``max_request_bytes`` encoded)."""
        ...

    def register_caller_service(
        self, name: str, handler: CallerServiceHandler, max_request_bytes: int = ...
    ) -> None:
        """Serve RPC calls to ``name`` with ``handler``, told who calls."""
        ...

    def unregister_service(self, name: str) -> None:
        """Stop serving ``name``."""
        ...

    def send(self, msgs: Sequence[Message]) -> None:
        """Send raft messages to their ``dst``; never blocks; loss is possible."""
        ...

    def flush(self) -> None:
        """Hand what `send` queued to the network now rather than at the end of
        this loop turn (before blocking the loop, say); never blocks."""
        ...

    async def call(self, addr: str, service: str, request: Any, timeout: float = 5.0) -> Any:
        """Call a service on ``addr``."""
        ...

    async def remove_peer(self, addr: str) -> None:
        """Release what is held for sending to ``addr``."""
        ...

    async def close(self) -> None:
        """Stop; release every task and socket."""
        ...
