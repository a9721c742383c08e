"""Printing `Node.describe` on SIGUSR2, as SOFAJRaft does.

``kill -USR2 <pid>`` makes a server that called `install_describe_signal`
log the describe dump of every node it hosts on the ``pyjraft.ops.describe``
logger: pretty JSON after the message in the text log format, or the dump as
the record's ``describe`` field in the JSON and key=value formats (one line,
as a log shipper wants).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyjraft.node import Node

log = logging.getLogger("pyjraft.ops.describe")


def describe_all(nodes: Sequence[Node]) -> list[dict[str, Any]]:
    """`Node.describe` of each node."""
    return [n.describe() for n in nodes]


def log_describe(nodes: Sequence[Node], *, pretty: bool = True) -> None:
    """Log the describe dump of ``nodes`` (see the module docstring)."""
    dump = describe_all(nodes)
    if pretty:
        text = json.dumps(dump, indent=2, default=str, sort_keys=True)
        log.warning("describe of %d node(s):\n%s", len(dump), text, extra={"event": "describe"})
    else:
        log.warning(
            "describe of %d node(s)", len(dump), extra={"event": "describe", "describe": dump}
        )


def install_describe_signal(
    nodes: Callable[[], Sequence[Node]], *, pretty: bool = True, signum: int | None = None
) -> bool:
    """On SIGUSR2 (or ``signum``), log the describe dump of ``nodes()``.

    Needs a running loop; returns False where the signal does not exist."""
    sig = signum if signum is not None else getattr(signal, "SIGUSR2", None)
    if sig is None:
        return False
    asyncio.get_running_loop().add_signal_handler(sig, lambda: log_describe(nodes(), pretty=pretty))
    return True
