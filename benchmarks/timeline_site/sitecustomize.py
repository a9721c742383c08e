"""Loaded by every Python process `benchmarks/c1_timeline.py` starts (it puts this
folder on PYTHONPATH). When ``PYJRAFT_TIMELINE`` names a folder, it wraps a few
node and transport methods, once they are imported, to append
``<CLOCK_MONOTONIC ns> <tag>`` lines to ``<folder>/<pid>.txt``. CLOCK_MONOTONIC
is one clock for all processes of the machine, so the files line up.

Tags: S ``Node.submit`` (a write is proposed), A ``Node._flush_proposals``
and F after it (the new entries proposed and sent), W ``Peer._take``
(frames about to be written to a socket), R ``TcpTransport._dispatch``
(raft messages decoded from a socket), D
``Node._drive`` (a Ready is about to be taken), P after ``Node._persist``
(a log write, and its fdatasync, done), C after ``Node._complete``
(entries applied, callers settled).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

_FOLDER = os.environ.get("PYJRAFT_TIMELINE")


def _install(folder: str) -> None:
    buf: list[str] = []
    out = open(os.path.join(folder, f"{os.getpid()}.txt"), "w")  # noqa: SIM115
    mono = time.monotonic_ns

    def record(tag: str) -> None:
        buf.append(f"{mono()} {tag}\n")
        if len(buf) >= 500:
            out.writelines(buf)
            out.flush()
            buf.clear()

    def wrap(cls: Any, name: str, tag: str, after: bool = False) -> None:
        f = getattr(cls, name)
        if after:

            def w(*a: Any, **k: Any) -> Any:
                r = f(*a, **k)
                record(tag)
                return r
        else:

            def w(*a: Any, **k: Any) -> Any:
                record(tag)
                return f(*a, **k)

        setattr(cls, name, w)

    def patch() -> None:
        from pyjraft.node.node import Node
        from pyjraft.transport import tcp
        from pyjraft.transport.peer import Peer

        wrap(Node, "submit", "S")
        wrap(Node, "_flush_proposals", "A")
        wrap(Node, "_flush_proposals", "F", after=True)
        wrap(Peer, "_take", "W")
        wrap(tcp.TcpTransport, "_dispatch", "R")
        wrap(Node, "_drive", "D")
        wrap(Node, "_persist", "P", after=True)
        wrap(Node, "_complete", "C", after=True)

    def later() -> None:
        # Patch once the node is up: methods the transport has already bound
        # (a protocol's data_received, say) are out of reach anyway, and
        # patching mid-import would see half-initialised modules.
        time.sleep(2.0)
        if "pyjraft.transport.peer" in sys.modules and "pyjraft.node.node" in sys.modules:
            patch()

    threading.Thread(target=later, daemon=True).start()


if _FOLDER:
    _install(_FOLDER)
