"""A cluster of `Node`s over `LocalNetwork`, for runtime tests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from typing import Any

from pyjraft.core.types import ConfState, Entry
from pyjraft.node import LeaderChangeContext, Node, NodeOptions, StateMachine, Status
from pyjraft.transport.local import LocalNetwork, LocalTransport


class CounterMachine(StateMachine):
    """Adds each entry's integer to a total; records every callback."""

    def __init__(self) -> None:
        self.value = 0
        self.applied: list[int] = []
        self.events: list[tuple[str, Any]] = []
        self.fail_on: bytes | None = None

    def on_apply(self, entries: Sequence[Entry]) -> list[int]:
        out = []
        for e in entries:
            if self.fail_on is not None and e.data == self.fail_on:
                raise RuntimeError("boom")
            self.value += int(e.data)
            self.applied.append(e.index)
            out.append(self.value)
        return out

    def on_leader_start(self, term: int) -> None:
        self.events.append(("leader_start", term))

    def on_leader_stop(self, status: Status) -> None:
        self.events.append(("leader_stop", status.code))

    def on_start_following(self, ctx: LeaderChangeContext) -> None:
        self.events.append(("start_following", ctx.leader))

    def on_stop_following(self, ctx: LeaderChangeContext) -> None:
        self.events.append(("stop_following", ctx.leader))

    def on_configuration_committed(self, conf: ConfState) -> None:
        self.events.append(("conf", conf))

    def on_error(self, error: BaseException) -> None:
        self.events.append(("error", type(error).__name__))

    def on_shutdown(self) -> None:
        self.events.append(("shutdown", None))


class AsyncCounterMachine(CounterMachine):
    """`CounterMachine` whose apply and leader-start callbacks are coroutines
    that yield to the loop before doing their work."""

    async def on_apply(self, entries: Sequence[Entry]) -> list[int]:  # type: ignore[override]
        await asyncio.sleep(0)
        self.events.append(("apply", entries[0].index))
        return CounterMachine.on_apply(self, entries)

    async def on_leader_start(self, term: int) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self.events.append(("leader_start", term))


IDS = ("n1:1", "n2:1", "n3:1")


class LocalCluster:
    """Three nodes on one `LocalNetwork`, optionally with data directories."""

    def __init__(
        self,
        seed: int,
        data_dir: str | None = None,
        machine: type[CounterMachine] = CounterMachine,
        storage: Callable[[str], tuple[Any, Any]] | None = None,
        **options: Any,
    ) -> None:
        """``storage(nid)``: the (log, meta) storage of node ``nid`` (default: by
        ``data_dir``, or in memory)."""
        self.seed = seed
        self.storage = storage
        self.machine_class = machine
        self.net = LocalNetwork(random.Random(seed))
        self.data_dir = data_dir
        self.options = {"election_timeout_ms": 150, "heartbeat_ms": 15, **options}
        self.nodes: dict[str, Node] = {}
        self.machines: dict[str, CounterMachine] = {}

    async def start(self, nid: str, **overrides: Any) -> Node:
        """Start (or restart) ``nid``; ``overrides`` are `NodeOptions` fields."""
        opts = NodeOptions(
            id=nid,
            peers=IDS,
            data_dir=f"{self.data_dir}/{nid}" if self.data_dir else None,
            **{**self.options, **overrides},
        )
        machine = self.machine_class()
        transport = LocalTransport(self.net, nid)
        log_storage, meta = self.storage(nid) if self.storage else (None, None)
        node = await Node.start(
            opts,
            machine,
            transport,
            rng=random.Random(f"{self.seed}{nid}"),
            log_storage=log_storage,
            meta=meta,
        )
        self.nodes[nid] = node
        self.machines[nid] = machine
        return node

    async def start_all(self) -> None:
        for nid in IDS:
            await self.start(nid)

    async def stop(self, nid: str) -> None:
        node = self.nodes.pop(nid)
        await node.shutdown()
        await node.transport.close()

    async def stop_all(self) -> None:
        for nid in list(self.nodes):
            await self.stop(nid)

    async def __aenter__(self) -> LocalCluster:
        await self.start_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()

    async def leader(self, timeout: float = 5.0) -> Node:
        return await wait_for(
            lambda: next((n for n in self.nodes.values() if n.is_leader), None),
            timeout,
            f"no leader (seed {self.seed})",
        )


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` on the loop until truthy; fail with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out: {what}")
        await asyncio.sleep(0.005)


def run(coro: Any, timeout: float = 30.0) -> Any:
    """Run a test coroutine with a hard time bound."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
