"""Helpers of the node processes: the JSON-lines protocol on stdio, and staying
bounded (die with the parent, die at the deadline)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

_out_lock = threading.Lock()


def emit(obj: dict[str, Any]) -> None:
    """Write one protocol line (a JSON object) to stdout."""
    line = json.dumps(obj, separators=(",", ":")) + "\n"
    with _out_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def set_pdeathsig() -> None:
    """Linux: ask for SIGKILL when the parent dies (no-op elsewhere)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def start_watchdog(deadline: float, parent: int) -> None:
    """Exit hard when the wall clock passes ``deadline`` or the parent is gone."""

    def watch() -> None:
        while True:
            if time.time() > deadline:
                sys.stderr.write(f"bench node {os.getpid()}: deadline reached, exiting\n")
                os._exit(3)
            if os.getppid() != parent:
                os._exit(4)
            time.sleep(0.25)

    threading.Thread(target=watch, name="bench-watchdog", daemon=True).start()


def start_echo_server() -> int:
    """Start a raw TCP echo server on a loopback port (a daemon thread); return the port.

    Used by the driver to measure one loopback round trip without any
    framework in the way.
    """
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)

    threading.Thread(target=serve, name="bench-echo", daemon=True).start()
    return int(srv.getsockname()[1])
