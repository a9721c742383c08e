"""Benchmark: the counter example as a 3-process cluster, driven by RaftClient load.

Starts three ``python -m pyjraft.examples.counter server`` processes on
127.0.0.1 (data directories on local disk, fdatasync on unless
``--unsafe-no-sync``), waits for a leader, then for each concurrency level
runs a closed loop of ``increment-and-get`` calls from that many concurrent
`RaftClient` tasks in this process (one shared `RpcClient` connection) for
``--seconds`` (after a short warm-up), and reports increments/s and the
median and p99 latency. The client runs in one Python process, so at high
concurrency it may itself be a bottleneck; its CPU share is reported.

The last line of output is one JSON object with every figure.

    python benchmarks/counter_load.py [--seconds 10] [--concurrency 1,64] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from pyjraft.client import RaftClient, UnknownOutcomeError
from pyjraft.examples.counter import COUNTER_SERVICE, STATUS_SERVICE, run
from pyjraft.transport import RpcClient


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _pct(sorted_us: list[float], q: float) -> float:
    if not sorted_us:
        return float("nan")
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


async def _wait_leader(rpc: RpcClient, addrs: list[str], timeout: float = 20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for a in addrs:
            try:
                st = await rpc.call(a, STATUS_SERVICE, None, timeout=0.5)
            except Exception:
                continue
            if st["role"] == "leader":
                return str(a)
        await asyncio.sleep(0.05)
    raise RuntimeError("no leader")


async def _load(
    rpc: RpcClient,
    group: str,
    addrs: list[str],
    conc: int,
    seconds: float,
    warmup: float,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    clients = [
        RaftClient(
            group, addrs, rpc=rpc, timeout=5.0, deadline=10.0, rng=random.Random(rng.random())
        )
        for _ in range(conc)
    ]
    lat: list[float] = []
    errors: dict[str, int] = {}
    clock = time.perf_counter  # not loop.time(): uvloop's has 1 ms resolution
    t_start = clock()
    t_measure = t_start + warmup
    t_end = t_measure + seconds
    measured = 0

    async def worker(client: RaftClient) -> None:
        nonlocal measured
        while True:
            t0 = clock()
            if t0 >= t_end:
                return
            try:
                await client.call(COUNTER_SERVICE, ["incr", 1])
            except UnknownOutcomeError:
                errors["unknown_outcome"] = errors.get("unknown_outcome", 0) + 1
                continue
            except Exception as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                continue
            t1 = clock()
            if t0 >= t_measure and t1 <= t_end:
                lat.append((t1 - t0) * 1e6)
                measured += 1

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(c) for c in clients))
    cpu = time.process_time() - cpu0
    lat.sort()
    return {
        "concurrency": conc,
        "seconds": seconds,
        "ops": measured,
        "ops_per_s": round(measured / seconds, 1),
        "median_ms": round(_pct(lat, 0.5) / 1000, 3),
        "p99_ms": round(_pct(lat, 0.99) / 1000, 3),
        "mean_ms": round(statistics.fmean(lat) / 1000, 3) if lat else None,
        "errors": errors,
        "client_cpu_share": round(cpu / (seconds + warmup), 2),
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="pyjraft-counter-bench-", dir=args.dir)
    addrs = [f"127.0.0.1:{p}" for p in _free_ports(3)]
    procs: list[subprocess.Popen[bytes]] = []
    rpc = RpcClient()
    try:
        for a in addrs:
            cmd = [
                sys.executable, "-m", "pyjraft.examples.counter", "server",
                "--data-dir", os.path.join(base, a.rsplit(":", 1)[1]),
                "--group", "bench", "--id", a, "--peers", ",".join(addrs),
                "--election-timeout-ms", "1000", "--die-with-parent", "--log-level", "WARNING",
            ]  # fmt: skip
            if args.unsafe_no_sync:
                cmd.append("--unsafe-no-sync")
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        leader = await _wait_leader(rpc, addrs)
        print(f"leader {leader}; data in {base}; sync={'off' if args.unsafe_no_sync else 'on'}")
        results = []
        for conc in args.concurrency:
            r = await _load(rpc, "bench", addrs, conc, args.seconds, args.warmup, args.seed)
            print(
                f"concurrency {conc:>3}: {r['ops_per_s']:>8.1f} incr/s  median {r['median_ms']} ms"
                f"  p99 {r['p99_ms']} ms  errors {r['errors']}  client cpu {r['client_cpu_share']}"
            )
            results.append(r)
        return {
            "benchmark": "counter_load",
            "nodes": 3,
            "sync": not args.unsafe_no_sync,
            "cpus": os.cpu_count(),
            "results": results,
        }
    finally:
        await rpc.close()
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    """Parse arguments, run, print the JSON summary last."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    ap.add_argument("--dir", default=None, help="parent of the data directories (default: $TMPDIR)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--unsafe-no-sync", action="store_true")
    args = ap.parse_args()

    async def go() -> int:
        print(json.dumps(await _main(args)))
        return 0

    run(go)


if __name__ == "__main__":
    main()
