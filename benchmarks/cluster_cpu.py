"""CPU per write of a whole 3-node cluster in one process: a steady measure of
the Python work on the write path, free of the scheduler noise of 3 processes
on 2 cores.

Three `Node`s with real `TcpTransport`s (loopback) and `SegmentLogStorage`s
(``sync=False`` by default: the work, not the disk) share one event loop;
``--concurrency`` callers write through the leader in a closed loop. Prints
the process CPU (user + system) per write over ``--ops`` measured writes --
leader and followers together, so about 3 nodes' worth of code per write --
and the wall time per write (every hop is a loop turn here, so it is a CPU
figure too, not a latency a cluster would see). The best of ``--rounds``.

With ``--metrics`` every node records its histograms (``NodeOptions.metrics``)
and one `pyjraft.ops.OpsServer` serves them, scraped over HTTP every
``--scrape-s`` seconds by this same process: the CPU figure then includes
what metrics cost, collection included.

    python benchmarks/cluster_cpu.py [--concurrency C] [--ops N] [--payload B]
                                     [--rounds R] [--sync] [--profile FILE]
                                     [--metrics [--scrape-s S]]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import tempfile
import time

from pyjraft.bench.server import CountingMachine
from pyjraft.node import Node, NodeOptions
from pyjraft.node.loop import run, tune_gc
from pyjraft.ops import OpsServer
from pyjraft.transport.tcp import TcpTransport


async def cluster(args: argparse.Namespace, folder: str) -> dict[str, float]:
    transports = [await TcpTransport.start() for _ in range(3)]
    peers = tuple(t.address for t in transports)
    nodes = []
    for i, t in enumerate(transports):
        opts = NodeOptions(
            id=t.address,
            peers=peers,
            data_dir=os.path.join(folder, f"n{i}"),
            sync=args.sync,
            election_timeout_ms=300 if i == 0 else 5000,
            heartbeat_ms=50,
            metrics=args.metrics,
        )
        nodes.append(await Node.start(opts, CountingMachine(), t))
    ops: OpsServer | None = None
    scraper: asyncio.Task[None] | None = None
    if args.metrics:
        ops = OpsServer(nodes=nodes)
        addr = await ops.start("127.0.0.1", 0)
        scraper = asyncio.get_running_loop().create_task(scrape(addr, args.scrape_s))
    try:
        while not nodes[0].is_leader:
            await asyncio.sleep(0.05)
        leader = nodes[0]
        payload = os.urandom(args.payload)
        tune_gc()

        async def phase(n: int) -> None:
            todo = iter(range(n))

            async def worker() -> None:
                for _ in todo:
                    await leader.apply(payload)

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))

        await phase(args.ops // 5)
        best: dict[str, float] = {}
        prof = cProfile.Profile() if args.profile else None
        for _ in range(args.rounds):
            if prof is not None:
                prof.enable()
            c0, w0 = time.process_time(), time.perf_counter()
            await phase(args.ops)
            c1, w1 = time.process_time(), time.perf_counter()
            if prof is not None:
                prof.disable()
            cpu_us = (c1 - c0) / args.ops * 1e6
            if not best or cpu_us < best["cpu_us_per_write"]:
                best = {"cpu_us_per_write": cpu_us, "wall_us_per_write": (w1 - w0) / args.ops * 1e6}
        if prof is not None:
            prof.dump_stats(args.profile)
        return {k: round(v, 2) for k, v in best.items()}
    finally:
        if scraper is not None:
            scraper.cancel()
        if ops is not None:
            await ops.close()
        for node in nodes:
            await node.shutdown()
        for t in transports:
            await t.close()


async def scrape(addr: str, interval: float) -> None:
    """GET /metrics every ``interval`` seconds, as Prometheus would."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://{addr}/metrics") as resp:
                await resp.read()
            await asyncio.sleep(interval)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--ops", type=int, default=5000)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sync", action="store_true", help="fdatasync (default: off)")
    ap.add_argument("--profile", default=None, help="cProfile the measured rounds to FILE")
    ap.add_argument("--metrics", action="store_true", help="histograms on, /metrics scraped")
    ap.add_argument("--scrape-s", type=float, default=1.0, help="scrape interval (--metrics)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        out = run(lambda: cluster(args, folder))
    out.update(
        concurrency=args.concurrency, payload=args.payload, sync=args.sync, metrics=args.metrics
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
