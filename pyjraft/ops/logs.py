"""Structured logging for server processes: JSON lines, key=value, or text.

`setup_logging` installs one stderr handler on the root logger with one of
three formatters and sets levels per logger (``--log-level
INFO,pyjraft.transport=DEBUG``). Every formatter prints a record's extra
attributes: the node's loggers (`pyjraft.node.events.NodeLogger`) put
``group``, ``node`` and ``term`` on every record, and events add ``event``
and their own fields, so a line reads, in each format::

    {"ts": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "pyjraft.node",
     "group": "counter", "node": "127.0.0.1:8101", "term": 3, "event": "election_won",
     "msg": "election won: leader of term 3"}
    ts=2026-01-02T03:04:05.678Z level=INFO logger=pyjraft.node group=counter
     node=127.0.0.1:8101 term=3 event=election_won msg="election won: leader of term 3"
    2026-01-02T03:04:05.678Z INFO pyjraft.node [counter 127.0.0.1:8101 t3] election won: ...

``static`` fields (say, the process's own node id) fill in what a record
lacks, so lines of process-wide loggers (the transport's) say where they
come from too.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

FORMATS = ("json", "kv", "text")
"""The values of ``--log-format``."""

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_FIRST = ("group", "node", "term", "event")


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The record's extra attributes (those `logging.LogRecord` does not have)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


def _timestamp(record: logging.LogRecord) -> str:
    secs = int(record.created)
    ms = int((record.created - secs) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{ms:03d}Z"


class _StructuredFormatter(logging.Formatter):
    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """ts, level, logger, the leading fields, msg, the rest; exc last."""
        extra = {**self.static, **record_fields(record)}
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
        }
        for k in _FIRST:
            if k in extra:
                out[k] = extra.pop(k)
        out["msg"] = record.getMessage()
        out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return out


class JsonFormatter(_StructuredFormatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        return json.dumps(self.fields(record), default=str, ensure_ascii=False)


def _kv_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    if s and all(c.isalnum() or c in "-_.:/@[]+" for c in s):
        return s
    return json.dumps(s, ensure_ascii=False)


class KeyValueFormatter(_StructuredFormatter):
    """``key=value`` pairs on one line (logfmt); values with spaces are quoted."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one logfmt line."""
        return " ".join(f"{k}={_kv_value(v)}" for k, v in self.fields(record).items())


class TextFormatter(_StructuredFormatter):
    """For people: time, level, logger, ``[group node tTERM]``, the message, then
    any other fields as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a readable line (and its traceback, if any)."""
        f = self.fields(record)
        exc = f.pop("exc", None)
        where = " ".join(
            str(x) for x in (f.pop("group", None), f.pop("node", None)) if x not in (None, "")
        )
        term = f.pop("term", None)
        if term is not None:
            where = f"{where} t{term}".strip()
        head = f"{f.pop('ts')} {f.pop('level')} {f.pop('logger')}"
        if where:
            head += f" [{where}]"
        line = f"{head} {f.pop('msg')}"
        rest = " ".join(f"{k}={_kv_value(v)}" for k, v in f.items())
        if rest:
            line += f" ({rest})"
        if exc:
            line += "\n" + str(exc)
        return line


def make_formatter(fmt: str, static: Mapping[str, Any] | None = None) -> logging.Formatter:
    """The formatter for ``--log-format`` ``fmt`` (one of `FORMATS`)."""
    if fmt == "json":
        return JsonFormatter(static)
    if fmt == "kv":
        return KeyValueFormatter(static)
    if fmt == "text":
        return TextFormatter(static)
    raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")


def parse_log_levels(spec: str) -> tuple[int | None, dict[str, int]]:
    """Parse ``"INFO,pyjraft.transport=DEBUG"``: the root level (None if not
    given) and a level per logger name. Raises `ValueError` on a bad level."""
    root: int | None = None
    per: dict[str, int] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, level = item.rpartition("=")
        value = logging.getLevelName(level.strip().upper())
        if not isinstance(value, int):
            raise ValueError(f"unknown log level {level.strip()!r} in {spec!r}")
        if sep:
            if not name.strip():
                raise ValueError(f"missing logger name before '=' in {spec!r}")
            per[name.strip()] = value
        else:
            root = value
    return root, per


_HANDLER_FLAG = "_pyjraft_ops_handler"


def setup_logging(
    fmt: str = "text",
    levels: str = "INFO",
    *,
    stream: TextIO | None = None,
    static: Mapping[str, Any] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (stderr) in ``fmt`` with ``levels`` (see
    `parse_log_levels`); replaces a handler an earlier call installed.
    Returns the handler. Raises `ValueError` on a bad format or level."""
    formatter = make_formatter(fmt, static)
    root_level, per = parse_log_levels(levels)
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_FLAG, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_FLAG, True)
    root.addHandler(handler)
    root.setLevel(root_level if root_level is not None else logging.INFO)
    for name, level in per.items():
        logging.getLogger(name).setLevel(level)
    return handler
