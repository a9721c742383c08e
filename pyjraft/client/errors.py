"""Errors raised by `pyjraft.client.RaftClient`.

The family is split by what the caller knows about the operation's outcome:

* `UnknownOutcomeError`: the operation MAY have been applied (or may still
  be). The client never retries these on its own, because retrying a
  non-idempotent operation (an increment) could apply it twice. Read to find
  out, or retry only if the operation is idempotent.
* `DeadlineExceededError`: every attempt failed in a way that proves the
  operation was NOT applied (not leader, overloaded, connection refused) and
  the deadline passed.
* `ServiceError`: the service answered with an application error (invalid
  request and the like); nothing to retry.
"""

from __future__ import annotations

from pyjraft.core.errors import RaftError


class ClientError(RaftError):
    """Base of every error `RaftClient.call` raises."""


class DeadlineExceededError(ClientError, TimeoutError):
    """The deadline passed and no attempt reached a leader that accepted the call.

    Every failed attempt was one that certainly did not apply the operation.
    ``last_error`` is the last attempt's error (None if there was no attempt).
    """

    def __init__(self, message: str, last_error: BaseException | None = None) -> None:
        self.last_error = last_error
        super().__init__(message)


class UnknownOutcomeError(ClientError):
    """The operation may or may not have been applied.

    Raised when the leader lost leadership after proposing it, or when the
    request was sent and then the connection broke or the reply timed out.
    ``addr`` is the server the request went to; ``reason`` says what happened.
    """

    def __init__(self, addr: str, reason: str) -> None:
        self.addr = addr
        self.reason = reason
        super().__init__(f"outcome unknown (request to {addr}): {reason}")


class ServiceError(ClientError):
    """The service reported an application error (``code``, ``message``).

    Not retried: the same request would fail the same way.
    """

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}" if message else code)


__all__ = ["ClientError", "DeadlineExceededError", "ServiceError", "UnknownOutcomeError"]
