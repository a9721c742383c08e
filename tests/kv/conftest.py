"""A one-replica KV server on a background thread's event loop, on loopback TCP,
so tests can drive it with the asyncio client, the sync client or the CLI."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pyjraft.kv.protocol import BARRIER
from pyjraft.kv.server import KvOptions, KvServer
from pyjraft.node import NodeOptions
from pyjraft.transport import TcpTransport
from tests.integration.cluster import env_seed

T = TypeVar("T")


class ServerThread:
    """A `KvServer` (a single-node group) running on its own thread and loop."""

    def __init__(self, data_dir: Path, kv_options: KvOptions, others: tuple[str, ...] = ()) -> None:
        self.data_dir = data_dir
        self.others = others
        self.addr = ""
        self.kv_options = kv_options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: KvServer | None = None
        self.transport: TcpTransport | None = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 20.0) -> T:
        """Run ``coro`` on the server's loop; return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self.thread.start()
        # Listen on a port the kernel picks: no race for a "free" port.
        self.transport = self.call(TcpTransport.start("127.0.0.1", 0))
        self.addr = self.transport.address
        options = NodeOptions(
            id=self.addr,
            peers=(self.addr, *self.others),
            group="kv",
            data_dir=str(self.data_dir),
            election_timeout_ms=60,
            heartbeat_ms=10,
        )
        self.server = self.call(KvServer.start(options, self.kv_options, self.transport))
        if not self.others:
            self.call(self._until_leader())
        return self

    async def _until_leader(self) -> None:
        assert self.server is not None and self.server.node is not None
        node = self.server.node
        while not node.is_leader:
            await asyncio.sleep(0.01)
        # Leading with its no-op applied: reads and writes are served from now on.
        await node.apply(BARRIER)

    def stop(self) -> None:
        if self.server is not None:
            self.call(self.server.shutdown())
            self.server = None
        if self.transport is not None:
            self.call(self.transport.close())
            self.transport = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start a server (``KvOptions`` fields as keywords); stopped at teardown. With
    ``others`` (addresses nobody serves) it is one replica of a group that can
    never elect it: a follower forever."""
    started: list[ServerThread] = []

    def start(others: tuple[str, ...] = (), **kv_options: Any) -> ServerThread:
        s = ServerThread(tmp_path / f"server{len(started)}", KvOptions(**kv_options), others)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerThread]) -> ServerThread:
    """A one-replica server with the default options."""
    return start_server()


@pytest.fixture
def seed() -> int:
    """The real-process tests' seed (``PYJRAFT_TEST_SEED``, printed)."""
    s = env_seed()
    print(f"PYJRAFT_TEST_SEED={s}")
    return s
