"""Overload must not starve heartbeats: a node works through a huge backlog in
bounded pieces, one per loop turn, and its timer runs in between
(`pyjraft.node.turns`). Deterministic: a tick made due *now* runs in the next
loop turn, so what the node did before it is exactly one turn's work."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

import pytest

from pyjraft.core.messages import Heartbeat
from pyjraft.core.types import Entry
from pyjraft.node import Node, OverloadedError
from pyjraft.node.turns import QueueDelay
from tests.node.harness import CounterMachine, LocalCluster, run, wait_for

BACKLOG = 50_000
PER_TURN = 1000
CALM = {"election_timeout_ms": 60_000, "heartbeat_ms": 10_000}
"""Timers that never fire by themselves in a test: only the ticks it makes due run."""


async def elect(c: LocalCluster, nid: str) -> Node:
    """Make ``nid`` campaign now rather than wait for its (calm) election timeout."""
    node = c.nodes[nid]
    node._core.campaign()
    node._schedule_drive()
    return await c.leader()


def _tick_now(node: Node) -> None:
    """Make the node's tick timer due at once (a heartbeat interval has passed)."""
    assert node._tick_handle is not None
    node._tick_handle.cancel()
    node._tick_handle = node._loop.call_at(node._loop.time(), node._on_tick)


def _record_heartbeats(node: Node, seen: list[tuple[int, int]]) -> None:
    """Record (proposed, applied) at each heartbeat the node hands to its transport."""
    send = node.transport.send

    def rec(msgs: Any) -> None:
        if any(type(m) is Heartbeat for m in msgs):
            seen.append((node.stats["proposals"], node.stats["applied"]))
        send(msgs)

    node.transport.send = rec  # type: ignore[method-assign]


class TickOnFirstApply(CounterMachine):
    """Makes its node's tick due the first time it applies a big batch."""

    node: Node | None = None

    def on_apply(self, entries: Sequence[Entry]) -> list[int]:
        if self.node is not None and len(self.applied) < 10 <= len(entries):
            _tick_now(self.node)
        return super().on_apply(entries)


def test_a_leader_with_a_huge_backlog_heartbeats_between_bounded_turns() -> None:
    async def main() -> None:
        options = {
            **CALM,
            "max_proposals_per_turn": PER_TURN,
            "max_applies_per_turn": PER_TURN,
            "max_queue_delay_ms": 0,
        }
        async with LocalCluster(seed=3, machine=TickOnFirstApply, **options) as c:
            leader = await elect(c, "n1:1")
            machine = c.machines[leader.id]
            assert isinstance(machine, TickOnFirstApply)
            await leader.apply(b"0")  # the leader's no-op and one entry are applied
            heartbeats: list[tuple[int, int]] = []
            _record_heartbeats(leader, heartbeats)
            per_turn: list[tuple[int, int]] = []
            done = asyncio.get_running_loop().create_future()
            results: list[Any] = []

            def finished(result: Any, exc: BaseException | None) -> None:
                results.append(exc or result)
                if len(results) == BACKLOG and not done.done():
                    done.set_result(None)

            def count_turn() -> None:  # once per loop turn, until the backlog is applied
                per_turn.append((leader.stats["proposals"], leader.stats["applied"]))
                if not done.done():
                    leader._loop.call_soon(count_turn)

            proposed0, applied0 = leader.stats["proposals"], leader.stats["applied"]
            for _ in range(BACKLOG):
                leader.submit(b"1", finished)
            count_turn()
            _tick_now(leader)  # due now: it runs in the next loop turn
            machine.node = leader  # and again once applying starts
            await done

            assert results[-1] == BACKLOG and not any(isinstance(r, BaseException) for r in results)
            # The first tick ran after one turn's proposals, not after the backlog.
            assert heartbeats, "no heartbeat was sent"
            proposed, _ = heartbeats[0]
            assert proposed - proposed0 == PER_TURN, heartbeats[:3]
            # The tick made due by the first big apply ran before the backlog was applied.
            applying = [h for h in heartbeats[1:] if h[1] - applied0 < BACKLOG]
            assert applying, f"no heartbeat while applying: {heartbeats}"
            assert applying[0][1] - applied0 <= 2 * PER_TURN, applying[0]
            # No turn proposed or applied more than its bound.
            for (p0, a0), (p1, a1) in itertools.pairwise(per_turn):
                assert p1 - p0 <= PER_TURN and a1 - a0 <= PER_TURN, (p1 - p0, a1 - a0)
            assert len(per_turn) >= BACKLOG // PER_TURN

    run(main(), timeout=120)


def test_the_queue_delay_sheds_once_the_oldest_proposal_waited_too_long() -> None:
    q = QueueDelay(0.5)
    q.proposed(10, now=100.0)
    assert not q.shedding
    q.proposed(20, now=100.4)
    assert not q.shedding
    q.proposed(30, now=100.6)  # the batch ending at 10 has waited 600 ms
    assert q.shedding
    assert "waited 600 ms" in q.reason(30, 100_000, now=100.6)
    q.applied(10, now=100.7)  # the oldest is now the one of 100.4: 300 ms
    assert not q.shedding
    q.applied(15, now=101.0)  # 20 is not applied yet: 600 ms
    assert q.shedding
    q.applied(30, now=101.0)
    assert not q.shedding and q.oldest_age(101.0) == 0.0
    q.proposed(40, now=200.0)
    q.clear()
    assert not q.shedding and q.oldest_age(300.0) == 0.0
    off = QueueDelay(0)
    off.proposed(1, now=0.0)
    off.proposed(2, now=1000.0)
    assert not off.shedding
    assert "5 proposals pending" in off.reason(5, 5, now=1000.0)


def test_a_leader_refuses_proposals_while_its_queue_is_too_old() -> None:
    async def main() -> None:
        async with LocalCluster(seed=4, max_queue_delay_ms=200, **CALM) as c:
            leader = await elect(c, "n2:1")
            assert await leader.apply(b"1") == 1
            c.net.isolate(leader.id)  # nothing commits from now on
            first = leader.apply(b"1")
            loop = asyncio.get_running_loop()
            await wait_for(
                lambda: leader._queue_delay.oldest_age(loop.time()) > 0.2, 5, "a proposal waits"
            )
            second = leader.apply(b"1")  # taken: the delay is judged as a batch is proposed
            await asyncio.sleep(0)
            with pytest.raises(OverloadedError, match="has waited"):
                await leader.apply(b"1")
            assert leader.stats["overloaded"] == 1
            c.net.heal()
            _tick_now(leader)  # a heartbeat: the followers answer, the leader resends
            assert (await first, await second) == (2, 3)
            assert not leader._queue_delay.shedding
            assert await leader.apply(b"1") == 4

    run(main())
