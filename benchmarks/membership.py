"""How long a leadership transfer and a 3 -> 5 grow take under a steady write
load, and what the writes see meanwhile.

Three counter server processes (``pyjraft.examples.counter``, durable, on
loopback) take increments from ``--concurrency`` closed-loop writers in this
process. After ``--steady`` seconds of writes alone (the baseline), the
leader is moved ``--transfers`` times (each to the next voter, through
`AdminClient.transfer_leader`: request to the reply that the target leads),
then the group grows from 3 to 5 voters ``--grows`` times (two fresh
``--join`` processes started beforehand, one ``change_peers`` timed from
request to reply: catch-up, joint configuration, final configuration; then
shrunk back and the two stopped). Writes are attributed to an operation when
they were in flight at some point during it (a write refused during a
transfer is retried by the client: its latency includes the retry); the
baseline is the steady phase.

    python benchmarks/membership.py [--concurrency 16] [--transfers 7] [--grows 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from pyjraft.client.admin import AdminClient
from pyjraft.examples.counter import CounterClient
from pyjraft.testing.ports import free_ports

GROUP = "bench"


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Servers:
    """Counter server processes in ``root``."""

    def __init__(self, root: str, election_timeout_ms: int) -> None:
        self.root = root
        self.election_timeout_ms = election_timeout_ms
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, addr: str, peers: list[str], join: bool = False) -> None:
        port = addr.rsplit(":", 1)[1]
        cmd = [sys.executable, "-m", "pyjraft.examples.counter", "server"]
        cmd += ["--data-dir", os.path.join(self.root, f"data-{port}"), "--group", GROUP]
        cmd += ["--id", addr, "--peers", ",".join(peers), "--die-with-parent"]
        cmd += ["--election-timeout-ms", str(self.election_timeout_ms), "--log-level", "WARNING"]
        if join:
            cmd.append("--join")
        with open(os.path.join(self.root, f"node-{port}.log"), "ab") as err:
            self.procs[addr] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err)

    def stop(self, addr: str) -> None:
        proc = self.procs.pop(addr)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for addr in list(self.procs):
            self.stop(addr)


class Load:
    """Closed-loop increments; each write's start time and latency."""

    def __init__(self, client: CounterClient, concurrency: int) -> None:
        self.client = client
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self._stop = False
        self._tasks = [asyncio.ensure_future(self._run()) for _ in range(concurrency)]

    async def _run(self) -> None:
        while not self._stop:
            t0 = time.perf_counter()
            try:
                await self.client.increment_and_get(1, deadline=30.0)
            except Exception:
                self.errors += 1
                continue
            self.samples.append((t0, time.perf_counter() - t0))

    def between(self, t0: float, t1: float) -> list[float]:
        """Latencies of the writes in flight at some point of ``[t0, t1)``."""
        return [lat for start, lat in self.samples if start < t1 and start + lat > t0]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def lat_summary(values: list[float]) -> dict[str, float]:
    return {
        "writes": len(values),
        "p50_ms": round(pct(values, 50) * 1000, 2),
        "p99_ms": round(pct(values, 99) * 1000, 2),
        "max_ms": round(max(values, default=float("nan")) * 1000, 2),
    }


async def wait_leader(admin: AdminClient, timeout: float = 15.0) -> str:
    end = time.monotonic() + timeout
    while True:
        try:
            return (await admin.get_leader())[0]
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.1)


async def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    ports = free_ports(3 + 2 * args.grows)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    founders, spares = addrs[:3], addrs[3:]
    servers = Servers(root, args.election_timeout_ms)
    for a in founders:
        servers.start(a, founders)
    admin = AdminClient(founders, group=GROUP, change_timeout=120.0)
    client = CounterClient(GROUP, addrs, timeout=2.0, deadline=30.0)
    try:
        leader = await wait_leader(admin)
        log(f"leader {leader}; steady load of {args.concurrency} writers")
        load = Load(client, args.concurrency)
        t0 = time.perf_counter()
        await asyncio.sleep(args.steady)
        steady = load.between(t0, time.perf_counter())
        transfers: list[float] = []
        during_transfers: list[float] = []
        for i in range(args.transfers):
            leader = await wait_leader(admin)
            target = founders[(founders.index(leader) + 1) % 3]
            t0 = time.perf_counter()
            got = await admin.transfer_leader(target)
            t1 = time.perf_counter()
            assert got == target, (got, target)
            transfers.append(t1 - t0)
            log(f"transfer {i + 1}: {leader} -> {target} in {(t1 - t0) * 1000:.1f} ms")
            await asyncio.sleep(args.gap)
            during_transfers += load.between(t0, t1)
        grows: list[float] = []
        during_grows: list[float] = []
        for i in range(args.grows):
            new = spares[2 * i : 2 * i + 2]
            for a in new:
                servers.start(a, founders, join=True)
            await asyncio.sleep(1.5)  # started and registered: the grow, not start-up, is timed
            t0 = time.perf_counter()
            conf = await admin.change_peers([*founders, *new])
            t1 = time.perf_counter()
            assert len(conf.voters) == 5, conf
            grows.append(t1 - t0)
            during_grows += load.between(t0, t1)
            st = await admin.list_peers()
            log(f"grow {i + 1}: 3 -> 5 in {(t1 - t0) * 1000:.1f} ms (progress {st.progress})")
            await asyncio.sleep(args.gap)
            await admin.change_peers(founders)
            for a in new:
                servers.stop(a)
            await asyncio.sleep(args.gap)
        await load.stop()
        return {
            "concurrency": args.concurrency,
            "writes": len(load.samples),
            "write_errors": load.errors,
            "steady": lat_summary(steady),
            "transfer_ms": {
                "median": round(statistics.median(transfers) * 1000, 1),
                "all": [round(t * 1000, 1) for t in transfers],
            },
            "during_transfers": lat_summary(during_transfers),
            "grow_3_to_5_ms": {
                "median": round(statistics.median(grows) * 1000, 1),
                "all": [round(t * 1000, 1) for t in grows],
            },
            "during_grows": lat_summary(during_grows),
        }
    finally:
        await client.close()
        await admin.close()
        servers.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--steady", type=float, default=4.0, help="seconds of writes alone")
    p.add_argument("--transfers", type=int, default=7)
    p.add_argument("--grows", type=int, default=3)
    p.add_argument("--gap", type=float, default=1.0, help="seconds between operations")
    p.add_argument("--election-timeout-ms", type=int, default=1000)
    p.add_argument("--data-root", default=None, help="where the data directories go")
    args = p.parse_args()
    root = tempfile.mkdtemp(prefix="pyjraft-membership-", dir=args.data_root)
    try:
        result = asyncio.run(run(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    s, t, g = result["steady"], result["during_transfers"], result["during_grows"]
    print(f"writes: {result['writes']} at concurrency {result['concurrency']}")
    print(f"{'phase':<24}{'time (ms, median)':>20}{'writes':>8}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'steady':<24}{'':>20}{s['writes']:>8}{s['p50_ms']:>9}{s['p99_ms']:>9}")
    print(
        f"{'leadership transfer':<24}{result['transfer_ms']['median']:>20}"
        f"{t['writes']:>8}{t['p50_ms']:>9}{t['p99_ms']:>9}"
    )
    print(
        f"{'grow 3 -> 5':<24}{result['grow_3_to_5_ms']['median']:>20}"
        f"{g['writes']:>8}{g['p50_ms']:>9}{g['p99_ms']:>9}"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
