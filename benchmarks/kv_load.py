"""Benchmark: pyjraft.kv through its client, on a 3-process durable loopback cluster.

Starts three ``pyjraft kv serve`` processes on 127.0.0.1 (data on local disk,
the raft log fdatasynced unless ``--unsafe-no-sync``; LMDB with its own
settings, see `pyjraft.kv.store`), waits for a leader, then for each
workload and concurrency level runs a closed loop from that many tasks in
this process sharing one `pyjraft.kv.Client` (one connection to the leader)
for ``--seconds`` after a warm-up, and reports operations/s and latency
percentiles. Workloads: ``put`` (100 B values by default, keys drawn from
``--keys``), ``get`` (linearizable: today through the temporary log barrier
of `pyjraft.kv._read_barrier`), ``get-serializable`` (local read on the
leader, no barrier). The client is one Python process on the same 2 cores
as the three replicas: its CPU share is reported, since it can be the limit.

The last line of output is one JSON object with every figure.

    python benchmarks/kv_load.py [--seconds 5] [--concurrency 1,64,256]
        [--workloads put,get,get-serializable] [--payload 100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from pyjraft.bench.stats import summarize
from pyjraft.kv import Client
from pyjraft.node.loop import run
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient


async def _wait_leader(rpc: RpcClient, addrs: list[str], timeout: float = 30.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for a in addrs:
            try:
                st = await rpc.call(a, "kv", {"op": "status"}, timeout=0.5)
            except Exception:
                continue
            if st.get("ok", {}).get("role") == "leader":
                return a
        await asyncio.sleep(0.1)
    raise RuntimeError("no leader")


async def _measure(
    kv: Client, workload: str, concurrency: int, seconds: float, keys: int, value: bytes
) -> dict[str, Any]:
    lat_us: list[int] = []
    errors = 0
    rng = random.Random(concurrency)
    stop_at = 0.0
    record = False

    async def worker() -> None:
        nonlocal errors
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            key = b"bench/%08d" % rng.randrange(keys)
            t0 = time.perf_counter_ns()
            try:
                if workload == "put":
                    await kv.put(key, value)
                elif workload == "get":
                    await kv.get(key)
                else:
                    await kv.get(key, read="serializable")
            except Exception:
                errors += 1
                continue
            if record:
                lat_us.append((time.perf_counter_ns() - t0) // 1000)

    # Warm-up (not recorded), then the measured window.
    stop_at = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    record = True
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stop_at = t0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    s = summarize(lat_us, errors, elapsed).as_dict()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    s["client_cpu_pct"] = round(100 * cpu / elapsed, 1)
    s["workload"] = workload
    s["concurrency"] = concurrency
    return s


async def _bench(args: argparse.Namespace, addrs: list[str]) -> list[dict[str, Any]]:
    rpc = RpcClient()
    try:
        leader = await _wait_leader(rpc, addrs)
    finally:
        await rpc.close()
    print(f"leader {leader}", flush=True)
    value = os.urandom(args.payload)
    out = []
    async with Client([leader, *addrs], deadline=30) as kv:
        # Every key exists before the reads.
        for start in range(0, args.keys, 256):
            keys = range(start, min(args.keys, start + 256))
            await asyncio.gather(*(kv.put(b"bench/%08d" % i, value) for i in keys))
        for workload in args.workloads.split(","):
            for c in (int(x) for x in args.concurrency.split(",")):
                s = await _measure(kv, workload, c, args.seconds, args.keys, value)
                out.append(s)
                print(
                    f"{workload:>17} c={c:<4} {s['ops_per_s']:>9.0f} ops/s  "
                    f"p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  "
                    f"errors {s['errors']}  client cpu {s['client_cpu_pct']}%",
                    flush=True,
                )
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", default="1,64,256")
    p.add_argument("--workloads", default="put,get,get-serializable")
    p.add_argument("--payload", type=int, default=100)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--dir", default=None, help="parent of the data directories (default: tmp)")
    p.add_argument("--unsafe-no-sync", action="store_true")
    p.add_argument("--commit-delay-ms", type=float, default=100.0, help="LMDB group commit")
    args = p.parse_args()
    base = tempfile.mkdtemp(prefix="pyjraft-kv-bench-", dir=args.dir)
    addrs = [f"127.0.0.1:{port}" for port in free_ports(3)]
    procs = []
    try:
        for a in addrs:
            cmd = [
                sys.executable, "-m", "pyjraft.cli", "kv", "serve", "--id", a,
                "--peers", ",".join(addrs), "--data-dir", os.path.join(base, a.replace(":", "_")),
                "--die-with-parent", "--log-level", "WARNING",
            ]  # fmt: skip
            if args.unsafe_no_sync:
                cmd.append("--unsafe-no-sync")
            cmd += ["--commit-delay-ms", str(args.commit_delay_ms)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
        results = run(lambda: _bench(args, addrs))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(base, ignore_errors=True)
    print(
        json.dumps(
            {
                "payload": args.payload,
                "sync": not args.unsafe_no_sync,
                "commit_delay_ms": args.commit_delay_ms,
                "seconds": args.seconds,
                "results": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
