"""State machines and helpers for the snapshot tests of the node runtime."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyjraft.node import Node, NodeOptions, SnapshotReader, SnapshotWriter
from pyjraft.transport.local import LocalNetwork, LocalTransport
from tests.node.harness import CounterMachine, wait_for


class SnapMachine(CounterMachine):
    """`CounterMachine` with snapshots: one file ``value`` (and, with
    ``ballast``, a file ``ballast`` of that many bytes, to make installs
    long). Records what it saved and loaded; ``gate`` (when set) holds every
    snapshot write on its worker thread until the test sets it."""

    def __init__(self, ballast: int = 0) -> None:
        super().__init__()
        self.ballast = ballast
        self.saved: list[tuple[int, int]] = []  # (index, value) captured
        self.loaded: list[tuple[int, int]] = []  # (index, value) loaded
        self.writing = threading.Event()
        self.gate: threading.Event | None = None
        self.writers_running = 0
        self.max_writers_running = 0
        self.fail_save: BaseException | None = None
        self.fail_write: BaseException | None = None

    def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:
        if self.fail_save is not None:
            raise self.fail_save
        value = self.value
        self.saved.append((writer.index, value))
        writer.user_meta = b"counter:%d" % value
        directory = writer.directory
        gate = self.gate
        fail = self.fail_write
        ballast = self.ballast

        def write() -> None:
            self.writers_running += 1
            self.max_writers_running = max(self.max_writers_running, self.writers_running)
            try:
                self.writing.set()
                if gate is not None:
                    assert gate.wait(20), "the test never released the snapshot writer"
                if fail is not None:
                    raise fail
                with open(os.path.join(directory, "value"), "w") as f:
                    f.write(str(value))
                if ballast:
                    rng = random.Random(value)
                    with open(os.path.join(directory, "ballast"), "wb") as f:
                        f.write(rng.randbytes(ballast))
            finally:
                self.writers_running -= 1

        return write

    def on_snapshot_load(self, reader: SnapshotReader) -> None:
        with open(os.path.join(reader.directory, "value")) as f:
            value = int(f.read())
        assert reader.user_meta == b"counter:%d" % value
        self.value = value
        self.loaded.append((reader.index, value))


class AsyncSnapMachine(SnapMachine):
    """Saves with an ``async def`` (applies stay paused while it runs)."""

    async def on_snapshot_save(self, writer: SnapshotWriter) -> Callable[[], None]:  # type: ignore[override]
        await asyncio.sleep(0)
        return SnapMachine.on_snapshot_save(self, writer)


ONE = ("solo:1",)


async def start_solo(
    data_dir: Path | None,
    machine: CounterMachine,
    *,
    net: LocalNetwork | None = None,
    **options: Any,
) -> Node:
    """A single-member group (it elects itself) over a `LocalTransport`."""
    opts = NodeOptions(
        id=ONE[0],
        peers=ONE,
        data_dir=str(data_dir) if data_dir is not None else None,
        election_timeout_ms=options.pop("election_timeout_ms", 40),
        heartbeat_ms=options.pop("heartbeat_ms", 10),
        **options,
    )
    transport = LocalTransport(net or LocalNetwork(random.Random(1)), ONE[0])
    node = await Node.start(opts, machine, transport, rng=random.Random(1))
    await wait_for(lambda: node.is_leader, 10, "the single member leads")
    return node


async def stop(node: Node) -> None:
    """Shut ``node`` down and close its transport."""
    await node.shutdown()
    await node.transport.close()


def snapshot_dirs(data_dir: Path, group: str = "default") -> list[str]:
    """Names in the group's snapshot directory (published, temporary, damaged)."""
    root = data_dir / group / "snapshot"
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def segment_files(data_dir: Path, group: str = "default") -> list[Path]:
    """The group's log segment files."""
    return sorted((data_dir / group / "log").glob("*.log"))


async def apply_n(node: Node, n: int, data: bytes = b"1") -> list[Any]:
    """``n`` writes through ``node``, 100 at a time."""
    out: list[Any] = []
    for start in range(0, n, 100):
        out += await asyncio.gather(*(node.apply(data) for _ in range(min(100, n - start))))
    return out
