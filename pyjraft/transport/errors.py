"""Errors raised by `pyjraft.transport`."""

from __future__ import annotations

from pyjraft.core.errors import RaftError


class TransportError(RaftError):
    """A connection could not be made, or was lost, or the transport is closed."""


class ProtocolError(TransportError):
    """Bytes received from the network are not a valid frame or message.

    ``reason`` says what was wrong, in words fit for a log line. Decoding
    untrusted bytes raises this and nothing else.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class InsecureBindError(ValueError):
    """A server without TLS was asked to listen on a non-loopback address
    without ``insecure_plaintext=True``: anyone who reaches such a port
    could steer the group."""


class RemoteError(RaftError):
    """The remote service handler raised; ``text`` is the error it reported."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(text)


class RpcTimeoutError(TransportError, TimeoutError):
    """An RPC did not complete within its timeout.

    It subclasses the builtin `TimeoutError`, which is `asyncio.TimeoutError`
    on Python 3.11+, so ``except asyncio.TimeoutError`` catches it too.
    """
