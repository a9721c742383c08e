"""pyjraft.client: find and follow a group's leader, retry safely, and the reply convention.

* `RaftClient` calls a service on the leader of a raft group: it follows
  not-leader hints and retries with backoff what certainly was not applied,
  and raises `UnknownOutcomeError` for what may have been.
* `RouteTable` caches, per group, the peers and the leader.
* `serve_apply` (server side) replicates an entry through a `Node` and turns
  the outcome into the reply dict the client understands (see
  `pyjraft.client.reply`).
"""

from pyjraft.client.client import RaftClient, never_sent
from pyjraft.client.errors import (
    ClientError,
    DeadlineExceededError,
    ServiceError,
    UnknownOutcomeError,
)
from pyjraft.client.reply import (
    INVALID_REQUEST,
    NOT_LEADER,
    OVERLOADED,
    UNAVAILABLE,
    UNKNOWN_OUTCOME,
    error_reply,
    ok_reply,
    reply_for_error,
    serve_apply,
)
from pyjraft.client.route import RouteTable

__all__ = [
    "INVALID_REQUEST",
    "NOT_LEADER",
    "OVERLOADED",
    "UNAVAILABLE",
    "UNKNOWN_OUTCOME",
    "ClientError",
    "DeadlineExceededError",
    "RaftClient",
    "RouteTable",
    "ServiceError",
    "UnknownOutcomeError",
    "error_reply",
    "never_sent",
    "ok_reply",
    "reply_for_error",
    "serve_apply",
]
