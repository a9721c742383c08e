"""The asyncio runtime: results, errors, overload, failures, restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyjraft.core.messages import AppendEntriesResponse
from pyjraft.core.types import Role
from pyjraft.node import (
    LeadershipLostError,
    NodeState,
    NotLeaderError,
    OverloadedError,
    ShutdownError,
    StateMachineError,
)
from tests.node.harness import (
    IDS,
    AsyncCounterMachine,
    CounterMachine,
    LocalCluster,
    run,
    wait_for,
)


def record_sends(
    transport: Any, events: list[str], tag: str, wanted: Callable[[Any], bool]
) -> None:
    """Record in ``events`` each send holding a message ``wanted`` accepts
    (as ``tag``) and each flush (as ``"flush"``), in the order they happen."""
    send, flush = transport.send, transport.flush

    def rec_send(msgs: Any) -> None:
        if any(map(wanted, msgs)):
            events.append(tag)
        send(msgs)

    def rec_flush() -> None:
        events.append("flush")
        flush()

    transport.send, transport.flush = rec_send, rec_flush


def test_apply_returns_results_in_log_order_and_replicates() -> None:
    async def main() -> None:
        async with LocalCluster(seed=1) as c:
            leader = await c.leader()
            results = await asyncio.gather(*(leader.apply(b"1") for _ in range(500)))
            assert sorted(results) == list(range(1, 501))
            assert results == list(range(1, 501)), "one batch applies in proposal order"
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 500, 5, f"{nid} applies")
            assert leader.stats["batches"] < 50, "a burst is proposed in few batches"

    run(main())


def test_follower_refuses_with_the_leader_address() -> None:
    async def main() -> None:
        async with LocalCluster(seed=2) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            await wait_for(lambda: follower.leader == leader.id, 5, "follower learns leader")
            with pytest.raises(NotLeaderError) as info:
                await follower.apply(b"1")
            assert info.value.leader == leader.id

    run(main())


def test_apply_is_a_future_whose_refusals_raise_when_awaited() -> None:
    async def main() -> None:
        async with LocalCluster(seed=2, max_entry_bytes=10) as c:
            leader = await c.leader()
            ok = leader.apply(b"1")
            assert isinstance(ok, asyncio.Future)
            assert await asyncio.gather(ok, leader.apply(b"2")) == [1, 3]
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            await wait_for(lambda: follower.leader == leader.id, 5, "follower learns leader")
            # Refused at once, yet raised from the await, as from a coroutine:
            # gather reports it instead of the call blowing up the caller.
            refused = follower.apply(b"1")
            too_big = leader.apply(b"x" * 11)
            results = await asyncio.gather(refused, too_big, return_exceptions=True)
            assert isinstance(results[0], NotLeaderError)
            assert results[0].leader == leader.id
            assert isinstance(results[1], ValueError)
            assert await leader.apply(b"1") == 4  # nothing of the refused was proposed

    run(main())


def test_overload_fails_fast_and_the_node_stays_healthy() -> None:
    async def main() -> None:
        async with LocalCluster(seed=3, max_pending_proposals=20) as c:
            leader = await c.leader()
            outcomes = await asyncio.gather(
                *(leader.apply(b"1") for _ in range(50)), return_exceptions=True
            )
            ok = [o for o in outcomes if isinstance(o, int)]
            over = [o for o in outcomes if isinstance(o, OverloadedError)]
            assert len(ok) == 20 and len(over) == 30, outcomes
            assert leader.stats["overloaded"] == 30
            assert await leader.apply(b"1") == 21, "load shed; the node still serves"
            assert leader.state is NodeState.RUNNING

    run(main())


@pytest.mark.parametrize("machine", [CounterMachine, AsyncCounterMachine])
def test_state_machine_exception_is_fatal_and_loud(machine: type[CounterMachine]) -> None:
    async def main() -> None:
        async with LocalCluster(seed=4, machine=machine) as c:
            leader = await c.leader()
            c.machines[leader.id].fail_on = b"7"
            with pytest.raises(StateMachineError):
                await leader.apply(b"7")
            assert leader.state is NodeState.ERROR
            await wait_for(
                lambda: ("error", "StateMachineError") in c.machines[leader.id].events,
                5,
                "on_error called",
            )
            with pytest.raises(StateMachineError):
                await leader.apply(b"1")
            # The rest of the group elects a new leader and carries on.
            survivor = await wait_for(
                lambda: next(
                    (n for n in c.nodes.values() if n.is_leader and n is not leader), None
                ),
                5,
                "new leader",
            )
            assert survivor.state is NodeState.RUNNING

    run(main())


def test_isolated_leader_fails_pending_with_unknown_outcome() -> None:
    async def main() -> None:
        async with LocalCluster(seed=5) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            c.net.isolate(leader.id)
            pending = asyncio.ensure_future(leader.apply(b"1"))
            with pytest.raises(LeadershipLostError) as info:
                await asyncio.wait_for(pending, 5)
            assert "unknown" in str(info.value)
            assert leader.role is not Role.LEADER
            c.net.heal()
            new = await c.leader()
            assert await new.apply(b"0") >= 1

    run(main())


def test_shutdown_fails_pending_and_later_calls() -> None:
    async def main() -> None:
        c = LocalCluster(seed=6)
        await c.start_all()
        leader = await c.leader()
        c.net.isolate(leader.id)  # nothing can commit
        pending = asyncio.ensure_future(leader.apply(b"1"))
        await asyncio.sleep(0)
        await leader.shutdown()
        with pytest.raises((ShutdownError, LeadershipLostError)):
            await pending
        with pytest.raises(ShutdownError):
            await leader.apply(b"1")
        assert c.machines[leader.id].events[-1] == ("shutdown", None)
        await c.stop_all()

    run(main())


def test_callbacks_leader_start_and_following() -> None:
    async def main() -> None:
        async with LocalCluster(seed=7) as c:
            leader = await c.leader()
            m = c.machines[leader.id]
            await wait_for(lambda: ("leader_start", leader.term) in m.events, 5, "leader_start")
            for nid in IDS:
                if nid != leader.id:
                    await wait_for(
                        lambda nid=nid: ("start_following", leader.id) in c.machines[nid].events,
                        5,
                        f"{nid} start_following",
                    )

    run(main())


@pytest.mark.parametrize("leader_write_thread", [False, True])
def test_restart_from_data_dir_recovers_log_and_state(
    tmp_path: Path, leader_write_thread: bool
) -> None:
    async def main() -> None:
        c = LocalCluster(seed=8, data_dir=str(tmp_path), leader_write_thread=leader_write_thread)
        await c.start_all()
        leader = await c.leader()
        for _ in range(5):
            await asyncio.gather(*(leader.apply(b"2") for _ in range(20)))
        terms = {nid: n.term for nid, n in c.nodes.items()}
        await c.stop_all()
        await c.start_all()
        try:
            for nid in IDS:
                assert c.nodes[nid].term >= terms[nid], "term survives restart"
            leader = await c.leader()
            assert await leader.apply(b"0") == 200, "every acknowledged write survived"
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 200, 5, f"{nid} replays")
        finally:
            await c.stop_all()

    run(main())


def test_cancelled_caller_does_not_disturb_others() -> None:
    async def main() -> None:
        async with LocalCluster(seed=9) as c:
            leader = await c.leader()
            a = asyncio.ensure_future(leader.apply(b"1"))
            b = asyncio.ensure_future(leader.apply(b"1"))
            await asyncio.sleep(0)
            a.cancel()
            assert await b in (1, 2)
            assert await leader.apply(b"1") == 3, "the cancelled entry was still applied"

    run(main())


def test_many_groups_share_one_transport_per_process() -> None:
    import random

    from pyjraft.node import Node, NodeOptions
    from pyjraft.transport.local import LocalNetwork, LocalTransport
    from tests.node.harness import CounterMachine

    async def main() -> None:
        net = LocalNetwork(random.Random(10))
        transports = {nid: LocalTransport(net, nid) for nid in IDS}
        groups: dict[str, list[Node]] = {"g1": [], "g2": []}
        for group, nodes in groups.items():
            for nid in IDS:
                opts = NodeOptions(
                    id=nid, peers=IDS, group=group, election_timeout_ms=150, heartbeat_ms=15
                )
                nodes.append(
                    await Node.start(
                        opts, CounterMachine(), transports[nid], rng=random.Random(group + nid)
                    )
                )
        try:
            for group, nodes in groups.items():
                leader = await wait_for(
                    lambda nodes=nodes: next((n for n in nodes if n.is_leader), None),
                    5,
                    f"{group} leader",
                )
                delta = b"1" if group == "g1" else b"10"
                results = await asyncio.gather(*(leader.apply(delta) for _ in range(20)))
                assert max(results) == 20 * int(delta), group
        finally:
            for nodes in groups.values():
                for n in nodes:
                    await n.shutdown()
            for t in transports.values():
                await t.close()

    run(main())


def test_submit_calls_back_with_results_and_raises_known_errors_at_once() -> None:
    async def main() -> None:
        async with LocalCluster(seed=11) as c:
            leader = await c.leader()
            got: list[tuple[object, BaseException | None]] = []
            finished = asyncio.Event()

            def done(result: object, exc: BaseException | None) -> None:
                got.append((result, exc))
                if len(got) == 100:
                    finished.set()

            for _ in range(100):
                leader.submit(b"1", done)
            await asyncio.wait_for(finished.wait(), 5)
            assert [r for r, _ in got] == list(range(1, 101))
            assert all(e is None for _, e in got)
            follower = next(n for n in c.nodes.values() if not n.is_leader)
            with pytest.raises(NotLeaderError):
                follower.submit(b"1", done)

    run(main())


def test_sync_off_writes_inline_and_still_replicates(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=12, data_dir=str(tmp_path), sync=False) as c:
            leader = await c.leader()
            results = await asyncio.gather(*(leader.apply(b"1") for _ in range(300)))
            assert sorted(results) == list(range(1, 301))
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 300, 5, f"{nid} applies")
        await c.start_all()  # what reached the page cache survives a clean restart
        try:
            leader = await c.leader()
            assert await leader.apply(b"0") == 300
        finally:
            await c.stop_all()

    run(main())


def test_async_state_machine_callbacks_are_awaited_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with LocalCluster(seed=13, data_dir=str(tmp_path), machine=AsyncCounterMachine) as c:
            leader = await c.leader()
            await wait_for(
                lambda: any(ev[0] == "leader_start" for ev in c.machines[leader.id].events),
                5,
                "async on_leader_start ran",
            )
            results = []
            for _ in range(5):
                results += await asyncio.gather(*(leader.apply(b"1") for _ in range(40)))
            assert results == list(range(1, 201)), "results in log order, none lost"
            for nid in IDS:
                m = c.machines[nid]
                await wait_for(lambda m=m: m.value == 200, 5, f"{nid} applies")
                assert m.applied == sorted(m.applied), "applied in index order"
                assert len(set(m.applied)) == len(m.applied), "each entry applied once"

    run(main())


def test_idle_followers_sleep_until_their_election_would_fire() -> None:
    async def main() -> None:
        async with LocalCluster(seed=15) as c:  # heartbeat 15 ms, election timeout 150 ms
            leader = await c.leader()
            before = {nid: n.stats["timer_wakeups"] for nid, n in c.nodes.items()}
            await asyncio.sleep(0.6)
            woke = {nid: n.stats["timer_wakeups"] - before[nid] for nid, n in c.nodes.items()}
            assert leader.is_leader, "no election while the leader is healthy"
            followers = [nid for nid in IDS if nid != leader.id]
            # The leader ticks every heartbeat (about 40 times); a follower fed
            # by heartbeats wakes on its own at most once per election timeout.
            assert woke[leader.id] >= 10
            for nid in followers:
                assert woke[nid] * 4 <= woke[leader.id], woke
            # Stop the leader: the followers' sleeping clocks still elect one.
            await c.stop(leader.id)
            survivor = await wait_for(
                lambda: next((n for n in c.nodes.values() if n.is_leader), None),
                5,
                "a new leader",
            )
            assert survivor.id in followers

    run(main())


def test_a_long_catch_up_yields_to_the_loop_between_batches(tmp_path: Path) -> None:
    # Re-applying a log after a restart comes in Readies of apply_batch_bytes:
    # one per loop turn, so timers and messages are served in between.
    async def main() -> None:
        c = LocalCluster(seed=16, data_dir=str(tmp_path), apply_batch_bytes=64)
        await c.start_all()
        leader = await c.leader()
        for _ in range(4):
            await asyncio.gather(*(leader.apply(b"1") for _ in range(50)))
        await c.stop_all()
        turns = 0

        async def count_turns() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        counter = asyncio.get_running_loop().create_task(count_turns())
        seen: list[int] = []
        orig = CounterMachine.on_apply

        def on_apply(self: CounterMachine, entries: Any) -> list[int]:
            seen.append(turns)
            return orig(self, entries)

        CounterMachine.on_apply = on_apply  # type: ignore[method-assign]
        try:
            await c.start_all()
            for nid in IDS:
                await wait_for(lambda nid=nid: c.machines[nid].value == 200, 10, f"{nid} replays")
        finally:
            CounterMachine.on_apply = orig  # type: ignore[method-assign]
            counter.cancel()
            await c.stop_all()
        assert len(seen) > 3 * 10, "the replay came in many small batches"
        # Three nodes apply in the same loop: per node, batches are a turn apart,
        # so no turn sees more than one batch of each node.
        assert max(seen.count(t) for t in set(seen)) <= 3

    run(main())


def test_a_proposals_appends_are_flushed_before_the_loop_turns() -> None:
    # Latency: the AppendEntries of a new batch must leave in the callback that
    # proposes it, before the loop reads sockets or takes the next Ready.
    async def main() -> None:
        async with LocalCluster(seed=11) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            events: list[str] = []
            record_sends(
                leader.transport, events, "send-entries", lambda m: bool(getattr(m, "entries", ()))
            )
            drive = leader._drive

            def rec_drive() -> None:
                events.append("drive")
                drive()

            leader._drive = rec_drive  # type: ignore[method-assign]
            await leader.apply(b"1")
            first = events.index("send-entries")
            assert events[first + 1] == "flush", events

    run(main())


def test_a_leader_applies_in_the_turn_its_own_write_commits() -> None:
    # Latency: when a follower acknowledged the entries before the leader's own
    # write finished, the write commits them and the same drive applies them,
    # not a loop turn later.
    async def main() -> None:
        c = LocalCluster(seed=12)
        await c.start_all()
        try:
            leader = await c.leader()
            assert await leader.apply(b"1") == 1
            follower = next(nid for nid in IDS if nid != leader.id)
            c.net.isolate(leader.id)  # no real acknowledgement will come
            done: list[tuple[Any, BaseException | None]] = []
            leader.submit(b"1", lambda r, e: done.append((r, e)))
            leader._flush_proposals()  # propose now; the Ready is still to come
            index = leader._core.log.last_index()
            ack = AppendEntriesResponse(leader.group, leader.term, follower, leader.id, True, index)
            leader._on_message(ack)
            assert not done
            leader._drive()  # write, commit (the leader and the follower), apply
            assert done == [(2, None)]
        finally:
            c.net.heal()
            await c.stop_all()

    run(main())


def test_a_followers_acknowledgement_leaves_before_it_applies() -> None:
    # Latency: a Ready that both acknowledges new entries and commits older
    # ones writes the acknowledgement out before the state machine runs.
    async def main() -> None:
        async with LocalCluster(seed=13) as c:
            leader = await c.leader()
            await leader.apply(b"1")
            follower = c.nodes[next(nid for nid in IDS if nid != leader.id)]
            events: list[str] = []
            record_sends(
                follower.transport,
                events,
                "send-ack",
                lambda m: isinstance(m, AppendEntriesResponse),
            )
            machine = c.machines[follower.id]
            on_apply = machine.on_apply

            def rec_apply(entries: Any) -> Any:
                events.append("apply")
                return on_apply(entries)

            machine.on_apply = rec_apply  # type: ignore[method-assign]
            for _ in range(20):
                await leader.apply(b"1")
            await wait_for(lambda: machine.value == 21, 5, "the follower applies all")
            together = 0
            for i, ev in enumerate(events):
                if ev != "apply":
                    continue
                last_ack = max((j for j in range(i) if events[j] == "send-ack"), default=-1)
                assert "flush" in events[last_ack + 1 : i] or last_ack < 0, events[: i + 1]
                together += i >= 2 and events[i - 2 : i] == ["send-ack", "flush"]
            assert together > 0, f"no Ready acknowledged and applied at once: {events}"

    run(main())
