"""CPU per KV put of a whole 3-replica cluster and its client in one process.

Like `benchmarks/cluster_cpu.py`, a steady measure of the Python work on the
write path, free of the scheduler noise of 4 processes on 2 cores: three
`KvServer`s (real `TcpTransport`s on loopback, segment logs with
``sync=False`` by default, LMDB with its usual settings) and ``--concurrency``
callers of one `pyjraft.kv.Client` share one event loop. For comparison the
same cluster shape runs the bare path a put takes through raft -- an
`RpcClient` call to a service that only does ``node.apply`` on a machine
that counts -- so the difference is what the KV layer costs (client,
service, validation, LMDB, bigger replies). Prints the process CPU per write
(all replicas and the client together) for both; the best of ``--rounds``.

    python benchmarks/kv_cpu.py [--concurrency 64] [--ops 20000] [--rounds 3]
                                [--sync] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import tempfile
import time
from typing import Any

from pyjraft.bench.server import CountingMachine
from pyjraft.kv import Client, KvOptions, KvServer
from pyjraft.node import Node, NodeOptions
from pyjraft.node.loop import run, tune_gc
from pyjraft.transport import RpcClient, TcpTransport


def _options(t: TcpTransport, peers: tuple[str, ...], i: int, folder: str, sync: bool) -> Any:
    return NodeOptions(
        id=t.address,
        peers=peers,
        group="kv",
        data_dir=os.path.join(folder, f"n{i}"),
        sync=sync,
        election_timeout_ms=300 if i == 0 else 5000,
        heartbeat_ms=50,
    )


async def _closed_loop(conc: int, n: int, op: Any) -> float:
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            await op(i)

    t0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return time.process_time() - t0


async def kv_cluster(args: argparse.Namespace, folder: str, prof: Any) -> float:
    transports = [await TcpTransport.start() for _ in range(3)]
    peers = tuple(t.address for t in transports)
    servers = [
        await KvServer.start(_options(t, peers, i, folder, args.sync), KvOptions(), t)
        for i, t in enumerate(transports)
    ]
    value = os.urandom(args.payload)
    try:
        leader = servers[0].node
        assert leader is not None
        while not leader.is_leader:
            await asyncio.sleep(0.05)
        tune_gc()
        async with Client([peers[0]], deadline=30) as kv:

            async def put(i: int) -> None:
                await kv.put(b"bench/%08d" % (i % 10_000), value)

            await _closed_loop(args.concurrency, min(2000, args.ops), put)
            if prof is not None:
                prof.enable()
            cpu = await _closed_loop(args.concurrency, args.ops, put)
            if prof is not None:
                prof.disable()
        return cpu / args.ops
    finally:
        for s in servers:
            await s.shutdown()
        for t in transports:
            await t.close()


async def bare_cluster(args: argparse.Namespace, folder: str) -> float:
    transports = [await TcpTransport.start() for _ in range(3)]
    peers = tuple(t.address for t in transports)
    nodes = [
        await Node.start(_options(t, peers, i, folder, args.sync), CountingMachine(), t)
        for i, t in enumerate(transports)
    ]
    transports[0].register_service("apply", nodes[0].apply)
    value = os.urandom(args.payload)
    rpc = RpcClient()
    try:
        while not nodes[0].is_leader:
            await asyncio.sleep(0.05)
        tune_gc()

        async def apply(i: int) -> None:
            await rpc.call(peers[0], "apply", value, timeout=30)

        await _closed_loop(args.concurrency, min(2000, args.ops), apply)
        return await _closed_loop(args.concurrency, args.ops, apply) / args.ops
    finally:
        await rpc.close()
        for n in nodes:
            await n.shutdown()
        for t in transports:
            await t.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--ops", type=int, default=20_000)
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sync", action="store_true", help="fdatasync the raft logs")
    p.add_argument("--profile", help="write a cProfile of one KV round here")
    args = p.parse_args()
    kv_best = bare_best = float("inf")
    for r in range(args.rounds):
        prof = cProfile.Profile() if args.profile and r == 0 else None
        with tempfile.TemporaryDirectory() as d:
            kv_best = min(kv_best, run(lambda: kv_cluster(args, d, prof)))  # noqa: B023
        if prof is not None:
            prof.dump_stats(args.profile)
        with tempfile.TemporaryDirectory() as d:
            bare_best = min(bare_best, run(lambda: bare_cluster(args, d)))
        print(f"round {r}: kv {kv_best * 1e6:.1f} us/put, bare {bare_best * 1e6:.1f} us/write")
    print(
        json.dumps(
            {
                "concurrency": args.concurrency,
                "payload": args.payload,
                "sync": args.sync,
                "kv_cpu_us_per_put": round(kv_best * 1e6, 1),
                "bare_cpu_us_per_write": round(bare_best * 1e6, 1),
                "kv_layer_us": round((kv_best - bare_best) * 1e6, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
