"""A leader whose process runs out of file descriptors keeps leading and
recovers (issue 13, section 3): its log cannot open its next segment, the
write is retried with backoff, the leader goes on heartbeating, and once
descriptors are back the stalled increments complete. Real processes; the
limit is lowered from outside with ``prlimit`` (Linux)."""

from __future__ import annotations

import asyncio
import os
import resource
import sys
from pathlib import Path

import pytest

from pyjraft.examples.counter import CounterClient
from tests.integration.cluster import CounterCluster

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(resource, "prlimit"),
    reason="lowers another process's RLIMIT_NOFILE with prlimit (Linux)",
)


def test_a_leader_out_of_file_descriptors_keeps_leading_and_recovers(tmp_path: Path) -> None:
    # Tiny segments: the log opens a new file every few dozen appends. Calm
    # timers: a loaded CI machine must not slip an election in.
    c = CounterCluster(
        tmp_path,
        election_timeout_ms=1500,
        heartbeat_ms=100,
        node_args=lambda addr: ["--segment-bytes", "4096"],
    )
    try:
        c.start_all()

        async def scenario() -> None:
            leader = await c.wait_for_leader()
            pid = c.procs[leader].pid
            client = CounterClient(c.group, [leader], timeout=60.0, deadline=120.0)
            try:
                assert await client.increment_and_get(1) == 1  # its connection is open
                before = await c.status(leader)
                assert before is not None
                soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
                # No descriptor left: the soft limit is what the leader holds now.
                resource.prlimit(
                    pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")), hard)
                )
                done = 0

                async def increments() -> None:
                    nonlocal done
                    for _ in range(2000):
                        await client.increment_and_get(1)
                        done += 1

                load = asyncio.ensure_future(increments())
                try:
                    st = before
                    for _ in range(600):
                        st = await c.status(leader, timeout=5.0)
                        assert st is not None, "the leader does not answer"
                        if st["stats"].get("storage_retries", 0) >= 3:
                            break
                        assert not load.done(), "2000 increments and no segment to open"
                        await asyncio.sleep(0.05)
                    assert st["stats"]["storage_retries"] >= 3, st["stats"]
                    stalled_at = done
                    # Stalled, and still the leader of the same term, heard by its followers.
                    assert st["role"] == "leader" and st["term"] == before["term"]
                    assert st["state"] == "running" and st["storage_stalled_ms"] > 0
                    for addr in c.addrs:
                        if addr != leader:
                            f = await c.status(addr, timeout=5.0)
                            assert f is not None and f["leader"] == leader
                            assert f["term"] == before["term"]
                    assert done == stalled_at, "an increment completed during the stall"
                finally:
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                await asyncio.wait_for(load, 120)
                after = await c.status(leader)
                assert after is not None
                assert after["role"] == "leader" and after["term"] == before["term"]
                assert after["stats"]["storage_stalls"] >= 1 and after["storage_stalled_ms"] == 0
                assert after["value"] == 2001
            finally:
                await client.close()
                await c.close()

        asyncio.run(scenario())
    finally:
        c.stop_all()
    text = "\n".join(c.log_path(a).read_text(errors="replace") for a in c.addrs)
    assert "failed for want of a file descriptor" in text
    assert "storage write succeeded after" in text
