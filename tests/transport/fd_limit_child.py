"""Run by `test_fd_limits.py` in a child process with a low ``RLIMIT_NOFILE``.

``python -m tests.transport.fd_limit_child reserve|emfile LIMIT`` prints one
JSON line of observations; the test judges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import sys
from typing import Any

from pyjraft.transport import RpcClient, ServerLimits, TcpTransport, TransportError
from pyjraft.transport.codec import decode_response, encode_request
from pyjraft.transport.framing import Kind, encode_frame
from pyjraft.transport.limits import open_fd_count

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def echo(req: Any) -> Any:
    return req


async def connect(t: TcpTransport) -> Conn:
    host, port = t.address.rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


async def ask(conn: Conn, value: int) -> Any:
    reader, writer = conn
    writer.write(encode_frame(Kind.REQUEST, encode_request(value, "echo", value)))
    header = await reader.readexactly(6)
    body = await reader.readexactly(int.from_bytes(header[:4], "big") - 2)
    return decode_response(body)[2]


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def reserve(limit: int) -> dict[str, Any]:
    """Connections until the server keeps its reserve; the reserve is there
    for files; served all along; accepting again once connections close."""
    t = await TcpTransport.start("127.0.0.1", 0, limits=ServerLimits(fd_reserve=40))
    t.register_service("echo", echo)
    conns: list[Conn] = []
    try:
        first = await connect(t)
        assert await ask(first, 1) == 1
        while t.accepting and len(conns) < limit:
            conns.append(await connect(t))
            await turns()
        paused_at = open_fd_count()
        files = [os.open(os.devnull, os.O_RDONLY) for _ in range(30)]  # storage's turn
        for fd in files:
            os.close(fd)
        served_while_paused = await ask(first, 2) == 2
        for _, w in conns[: len(conns) // 2]:
            w.close()
        await asyncio.wait_for(_until(lambda: t.accepting), 10)
        late = conns[-1]  # queued by the kernel while we were not accepting
        answered_late = await asyncio.wait_for(ask(late, 3), 10) == 3
        return {
            "limit": limit,
            "connections": len(conns),
            "paused_at_fds": paused_at,
            "files_opened_in_reserve": len(files),
            "served_while_paused": served_while_paused,
            "answered_after_resume": answered_late,
            "stats": t.stats.as_dict(),
        }
    finally:
        for _, w in conns:
            w.close()
        await t.close()


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.01)


async def emfile(limit: int) -> dict[str, Any]:
    """Descriptors run out under the server (reserve 0): accept fails with
    EMFILE, is logged and paused, and the server carries on once some are free."""
    t = await TcpTransport.start("127.0.0.1", 0, limits=ServerLimits(fd_reserve=0, read_timeout=30))
    t.register_service("echo", echo)
    first = await connect(t)
    assert await ask(first, 1) == 1
    hog: list[int] = []
    with contextlib.suppress(OSError):
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    os.close(hog.pop())  # one descriptor left: the client's socket takes it
    try:
        late = await connect(t)
        await asyncio.wait_for(_until(lambda: t.stats.fd_exhausted > 0), 10)
        served_meanwhile = await ask(first, 2) == 2
        # Connecting out needs a descriptor too: a clear error, logged and counted.
        rpc = RpcClient()
        try:
            await rpc.call(t.address, "echo", 0)
            connect_error = ""
        except TransportError as e:
            connect_error = str(e)
        finally:
            await rpc.close()
        for fd in hog[:10]:
            os.close(fd)
        del hog[:10]
        answered = await asyncio.wait_for(ask(late, 3), 10) == 3
        late[1].close()
        return {
            "limit": limit,
            "served_meanwhile": served_meanwhile,
            "answered_after": answered,
            "connect_error": connect_error,
            "client_fd_exhausted": rpc.stats.fd_exhausted,
            "stats": t.stats.as_dict(),
        }
    finally:
        for fd in hog:
            os.close(fd)
        first[1].close()
        await t.close()


def main() -> None:
    scenario, limit = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    logging.basicConfig(stream=sys.stderr, level=logging.INFO)
    fn = reserve if scenario == "reserve" else emfile
    print(json.dumps(asyncio.run(asyncio.wait_for(fn(limit), 60))), flush=True)


if __name__ == "__main__":
    main()
