"""``pyjraft kv serve`` hosts the admin service and takes ``--join``: a fourth
replica is added to a running KV group and serves what was written before."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from pyjraft.client.admin import AdminClient
from pyjraft.kv.client import Client
from tests.kv.cluster import KvCluster

pytestmark = pytest.mark.timeout(120)


def test_a_joining_kv_replica_is_added_and_catches_up(tmp_path: Path, seed: int) -> None:
    founders: list[str] = []

    def args(addr: str) -> list[str]:
        return ["--peers", ",".join(founders), *([] if addr in founders else ["--join"])]

    c = KvCluster(tmp_path, 4, group="kv", node_args=args)
    founders[:] = c.addrs[:3]
    new = c.addrs[3]

    async def main() -> None:
        await c.wait_for_leader()
        async with (
            Client(founders, rng=random.Random(seed), deadline=20) as kv,
            AdminClient(founders, group="kv") as admin,
        ):
            await asyncio.gather(*(kv.put(b"k/%d" % i, b"v") for i in range(50)))
            c.start(new)
            conf = await admin.add_peer(new)
            assert set(conf.voters) == {*founders, new}
            await kv.put(b"after", b"1")
            leader_st = await c.status(conf.leader)
            assert leader_st is not None
            end = time.monotonic() + 15
            while (st := await c.status(new)) is None or st["applied_index"] < leader_st[
                "applied_index"
            ]:
                assert time.monotonic() < end, f"{new} did not catch up: {st}\n{c.logs()}"
                await asyncio.sleep(0.05)
            assert st["role"] == "follower"
        await c.close()

    try:
        for a in founders:
            c.start(a)
        asyncio.run(main())
    finally:
        c.stop_all()
        print(c.logs(15))
