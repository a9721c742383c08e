"""`BusyPoll` and `NodeOptions.busy_poll_us`: a leader's loop polls after sending entries."""

from __future__ import annotations

import asyncio

import pytest

from pyjraft.core.errors import ConfigError
from pyjraft.node import NodeOptions
from pyjraft.node.busy_poll import BusyPoll, for_loop
from tests.node.harness import LocalCluster, run, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_loop_turns_until_the_deadline_then_sleeps_again() -> None:
    async def main() -> None:
        clock = FakeClock()
        poll = BusyPoll(asyncio.get_running_loop(), clock)
        assert not poll.running
        poll.extend(0.001)
        assert poll.running
        for _ in range(5):
            await asyncio.sleep(0)
        assert poll.running, "still before the deadline"
        turns = poll.turns
        assert turns >= 4, "one turn per loop iteration"
        clock.now += 0.0005
        poll.extend(0.001)  # moves the deadline to 100.0015
        clock.now += 0.0009  # past the first deadline, before the second
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert poll.running and poll.turns > turns
        clock.now += 0.0002
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poll.running, "stopped once the deadline passed"
        stopped_at = poll.turns
        for _ in range(3):
            await asyncio.sleep(0)
        assert poll.turns == stopped_at, "no turns after stopping"

    run(main())


def test_a_shorter_extension_never_brings_the_deadline_forward() -> None:
    async def main() -> None:
        clock = FakeClock()
        poll = BusyPoll(asyncio.get_running_loop(), clock)
        poll.extend(1.0)
        poll.extend(0.001)
        clock.now += 0.5
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert poll.running
        clock.now += 0.6
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert not poll.running

    run(main())


def test_one_poller_per_loop() -> None:
    async def main() -> BusyPoll:
        loop = asyncio.get_running_loop()
        assert for_loop(loop) is for_loop(loop)
        return for_loop(loop)

    assert run(main()) is not run(main()), "each loop has its own"


@pytest.mark.parametrize("busy_poll_us", [0, 5_000])
def test_a_leader_polls_after_sending_entries_only_when_asked(busy_poll_us: int) -> None:
    async def main() -> None:
        async with LocalCluster(seed=21, busy_poll_us=busy_poll_us) as c:
            leader = await c.leader()
            poll = for_loop(asyncio.get_running_loop())
            before = poll.turns
            assert await leader.apply(b"1") == 1
            if busy_poll_us:
                assert poll.turns > before, "the loop turned without sleeping"
            else:
                assert poll.turns == before == 0 and not poll.running

    run(main())


def test_an_idle_leader_never_polls() -> None:
    async def main() -> None:
        async with LocalCluster(seed=22, busy_poll_us=5_000) as c:
            leader = await c.leader()
            sent = leader.transport.stats.messages_out
            await wait_for(
                lambda: leader.transport.stats.messages_out >= sent + 8, 5, "heartbeats go out"
            )
            poll = for_loop(asyncio.get_running_loop())
            assert poll.turns == 0 and not poll.running, "heartbeats alone do not poll"

    run(main())


def test_busy_poll_us_must_not_be_negative() -> None:
    NodeOptions(id="a:1", peers=("a:1",), busy_poll_us=0)
    with pytest.raises(ConfigError, match="busy_poll_us"):
        NodeOptions(id="a:1", peers=("a:1",), busy_poll_us=-1)
