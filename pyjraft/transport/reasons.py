"""Counting transport errors by kind, with labels few enough for metrics.

A bad frame's `ProtocolError.reason` is a sentence with numbers and
excerpts in it, fit for a log line but not for a metric label; a failed
connection carries an exception. `bad_frame_kind` and `count_connection_error`
reduce each to a short, bounded name, counted in `TransportStats.errors`
under ``bad_frame:<kind>`` and ``<what>:<exception class>`` keys
(``connect:ConnectionRefusedError``, ``lost:ConnectionResetError``...), which
`pyjraft.ops` exports with the reason as a label.
"""

from __future__ import annotations

from pyjraft.transport.base import TransportStats

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("frame header", "frame_header"),
    ("frame length", "frame_length"),
    ("unsupported wire version", "wire_version"),
    ("unknown frame kind", "frame_kind"),
    ("stream ended inside a frame", "truncated_frame"),
    ("malformed msgpack", "malformed_msgpack"),
    ("entries", "entries"),
    ("entry ", "entries"),
    ("message:", "message"),
    ("raft body", "message"),
    ("request", "rpc_request"),
    ("response", "rpc_response"),
)

MAX_KINDS = 64
"""Distinct keys `TransportStats.errors` keeps; later new ones count as ``other``."""


def bad_frame_kind(reason: str) -> str:
    """A short name for a `ProtocolError` reason: ``frame_length``,
    ``malformed_msgpack``, ``message_field``, ... or ``other``."""
    for prefix, kind in _PREFIXES:
        if reason.startswith(prefix):
            return kind
    head = reason.split(":", 1)[0]
    if head[:1].isupper() and (head.replace(".", "").replace(" ", "").replace("_", "").isalnum()):
        return "message_field"  # "AppendEntries.term: invalid ..." and the like
    return "other"


def count_bad_frame(stats: TransportStats, reason: str) -> None:
    """Count a connection closed for ``reason`` (a `ProtocolError.reason`)."""
    stats.bad_frames += 1
    _bump(stats, f"bad_frame:{bad_frame_kind(reason)}")


def count_connection_error(stats: TransportStats, what: str, exc: BaseException) -> None:
    """Count a failed or lost connection: ``what`` is ``connect``, ``lost``,
    ``rpc_connect``, ...; the exception's class names the reason."""
    _bump(stats, f"{what}:{type(exc).__name__}")


def count_limit(stats: TransportStats, counter: str) -> None:
    """Count a connection closed for a limit (``timed_out_connections``, ...)."""
    _bump(stats, f"limit:{counter}")


def _bump(stats: TransportStats, key: str) -> None:
    errors = stats.errors
    if key not in errors and len(errors) >= MAX_KINDS:
        key = "other"
    errors[key] = errors.get(key, 0) + 1
