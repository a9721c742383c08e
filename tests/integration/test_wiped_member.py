"""A follower restarted on a wiped data directory is refused with a clear
error and a non-zero exit status while the cluster keeps serving;
``--force-new-instance`` lets it rejoin (issue 13, section 5). Real processes."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from pyjraft.examples.counter import EXIT_FAILURE, CounterClient
from tests.integration.cluster import CounterCluster


def test_a_wiped_follower_is_refused_then_rejoins_with_force_new_instance(
    tmp_path: Path,
) -> None:
    extra: dict[str, list[str]] = {}
    c = CounterCluster(
        tmp_path,
        election_timeout_ms=1500,
        heartbeat_ms=100,
        node_args=lambda addr: extra.get(addr, []),
    )
    try:
        c.start_all()

        async def scenario() -> None:
            leader = await c.wait_for_leader()
            victim = next(a for a in c.addrs if a != leader)
            client = CounterClient(c.group, c.addrs, timeout=5.0, deadline=30.0)
            try:
                for _ in range(5):
                    await client.increment_and_get(1)
                await c.wait_caught_up(victim, (await c.status(leader) or {})["commit_index"])
                c.kill(victim)
                shutil.rmtree(tmp_path / f"data-{victim.rsplit(':', 1)[1]}")
                c.start(victim)
                status = await asyncio.to_thread(c.procs[victim].wait, 60)
                assert status == EXIT_FAILURE, c.logs()
                c.procs.pop(victim)
                log = c.log_path(victim).read_text(errors="replace")
                assert "refuses to start: its data directory" in log
                assert "was lost or replaced" in log and "--force-new-instance" in log
                # The cluster serves on without it.
                assert await client.increment_and_get(1) == 6
                leader_st = await c.status(leader)
                assert leader_st is not None and leader_st["role"] == "leader"

                extra[victim] = ["--force-new-instance"]
                c.start(victim)
                for _ in range(600):
                    st = await c.status(victim)
                    if st is not None and st["registration"] == "registered":
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{victim} did not rejoin\n{c.logs()}")
                # Its next append shows the leader that the follower's log went
                # backwards (the core re-probes from its hint) and refills it.
                assert await client.increment_and_get(1) == 7
                st = await c.wait_caught_up(victim, 8)
                assert st["value"] == 7
            finally:
                await client.close()
                await c.close()

        asyncio.run(scenario())
    finally:
        c.stop_all()
    text = "\n".join(c.log_path(a).read_text(errors="replace") for a in c.addrs)
    assert "replaced instance" in text  # the peers logged what they accepted
