"""Errors of `pyjraft.kv.Client`, beside those of `pyjraft.client`.

What a caller can see: `CompactedError` (a watch asked for history that is
gone), `InvalidRequestError` (the request was refused before anything was
proposed), `pyjraft.client.UnknownOutcomeError` (a write may or may not
have been applied: never retried blindly), `pyjraft.client.DeadlineExceededError`
(no replica accepted the call in time; nothing was applied) and
`pyjraft.client.ServiceError` for any other error reply.
"""

from __future__ import annotations

from pyjraft.client.errors import ClientError, ServiceError


class CompactedError(ClientError):
    """A watch's start revision is older than the history kept.

    ``compact_revision`` is the oldest revision still available (watch from
    it, after re-reading the state with a scan); ``revision`` the store's.
    """

    def __init__(self, compact_revision: int, revision: int) -> None:
        self.compact_revision = compact_revision
        self.revision = revision
        super().__init__(
            f"history before revision {compact_revision} was compacted (store at {revision})"
        )


class InvalidRequestError(ServiceError):
    """The request was refused before proposing: malformed, too large, unknown op."""

    def __init__(self, message: str) -> None:
        super().__init__("invalid_request", message)


__all__ = ["CompactedError", "InvalidRequestError"]
