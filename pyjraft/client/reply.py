"""The reply convention between services and `RaftClient`, and the server-side helper.

A service handler built for `RaftClient` returns a dict, one of::

    {"ok": value}                                  # success; value is the result
    {"error": "not_leader", "leader": "host:port"} # not applied; leader "" if unknown
    {"error": "overloaded", "message": "..."}      # not applied; retry later
    {"error": "unavailable", "message": "..."}     # not applied; node shut down/stopping
    {"error": "unknown_outcome", "message": "..."} # proposed, outcome unknown
    {"error": "<code>", "message": "..."}          # application error; not retried

`serve_apply` does the usual thing in one line: replicate ``data`` through a
`Node` and turn the result, or any of the node's documented errors, into one
of these replies. It returns a future, so a handler that only forwards can
be a plain function, which the RPC server answers with no task per request::

    def handle(request):
        return serve_apply(node, encode(request))

(``await serve_apply(...)`` inside an ``async def`` handler works too.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from pyjraft.core.errors import NotLeaderError, ProposalDroppedError
from pyjraft.node.errors import (
    LeadershipLostError,
    NodeStorageError,
    OverloadedError,
    ShutdownError,
    StateMachineError,
)
from pyjraft.node.lifecycle import NodeState
from pyjraft.node.node import Node

NOT_LEADER = "not_leader"
"""Error code: this node does not lead; ``leader`` names the one it knows (or ``""``)."""
OVERLOADED = "overloaded"
"""Error code: the leader shed load; nothing was proposed."""
UNAVAILABLE = "unavailable"
"""Error code: the node is not running (shut down or failed); nothing was proposed."""
UNKNOWN_OUTCOME = "unknown_outcome"
"""Error code: the entry was proposed but the outcome is unknown (leadership lost,
storage failed, state machine failed)."""
INVALID_REQUEST = "invalid_request"
"""Error code: the request was rejected before proposing (malformed, too large)."""


def ok_reply(value: Any) -> dict[str, Any]:
    """A success reply carrying ``value``."""
    return {"ok": value}


def error_reply(code: str, message: str = "", **extra: Any) -> dict[str, Any]:
    """An error reply with ``code``, a human-readable ``message`` and extra fields."""
    reply: dict[str, Any] = {"error": code, "message": message}
    reply.update(extra)
    return reply


def reply_for_error(exc: BaseException) -> dict[str, Any]:
    """Turn an error from `Node.apply` into its reply; re-raise anything else.

    `NotLeaderError` -> ``not_leader`` (with the leader hint), `OverloadedError`
    -> ``overloaded``, `ShutdownError` and `ProposalDroppedError` (a
    leadership transfer under way) -> ``unavailable`` (nothing was proposed),
    `LeadershipLostError`, `NodeStorageError` and `StateMachineError` ->
    ``unknown_outcome``, `ValueError` (entry too large)
    -> ``invalid_request``.
    """
    if isinstance(exc, NotLeaderError):
        return error_reply(NOT_LEADER, str(exc), leader=exc.leader)
    if isinstance(exc, OverloadedError):
        return error_reply(OVERLOADED, str(exc))
    if isinstance(exc, (ShutdownError, ProposalDroppedError)):
        return error_reply(UNAVAILABLE, str(exc))
    if isinstance(exc, (LeadershipLostError, NodeStorageError, StateMachineError)):
        return error_reply(UNKNOWN_OUTCOME, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):
        return error_reply(INVALID_REQUEST, str(exc))
    raise exc


def serve_apply(node: Node, data: bytes) -> asyncio.Future[dict[str, Any]]:
    """Replicate ``data`` through ``node``; the future resolves to the reply for
    the outcome.

    ``{"ok": result}`` with the state machine's result on success; otherwise
    the error reply `reply_for_error` gives. A node that is not running
    answers ``unavailable`` without trying, so a client that cached a failed
    leader moves on instead of seeing unknown outcomes.

    A future rather than a coroutine (as `Node.apply`): no coroutine, and
    behind an RPC service no task, per request. Schedule it with
    `asyncio.ensure_future`, not `asyncio.create_task`. Cancelling it does
    not withdraw the entry.
    """
    reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    if node.state is not NodeState.RUNNING:
        reply.set_result(error_reply(UNAVAILABLE, f"node {node.id} is {node.state.value}"))
        return reply

    def done(result: Any, exc: BaseException | None) -> None:
        if reply.done():  # cancelled by its caller
            return
        if exc is None:
            reply.set_result(ok_reply(result))
            return
        try:
            reply.set_result(reply_for_error(exc))
        except BaseException as unexpected:  # not one of the node's documented errors
            reply.set_exception(unexpected)

    try:
        node.submit(data, done)
    except Exception as exc:  # refused at once: not leader, overloaded, too large...
        done(None, exc)
    return reply


__all__ = [
    "INVALID_REQUEST",
    "NOT_LEADER",
    "OVERLOADED",
    "UNAVAILABLE",
    "UNKNOWN_OUTCOME",
    "error_reply",
    "ok_reply",
    "reply_for_error",
    "serve_apply",
]
