"""Install throughput of a large snapshot between two local nodes, and how much
the RSS of the sending and the receiving process grows meanwhile.

Three `pyjraft.bench.server` processes (durable, loopback). One follower is
killed; the leader applies a few writes and takes a snapshot whose
state machine (`pyjraft.bench.machines.BlobMachine`) writes ``--size-mib``
of pseudo-random bytes, then compacts its log past the frozen follower.
The follower is restarted and must install the snapshot: fetch every chunk,
write and fsync it, verify every CRC32C, publish, reset its log, load. The
figure is the follower's own measure of the install (offer accepted to
snapshot loaded); RSS is sampled every 10 ms from outside, and its peak
growth over its value when the follower has started (before the install
begins) is reported for both processes. Each
run uses a fresh cluster; medians and ranges over ``--runs``.

    python benchmarks/snapshot_install.py [--size-mib 256] [--runs 5]
        [--chunk-kib 1024] [--window 4] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from typing import Any

from pyjraft.bench.snapcluster import RssSampler, SnapCluster, summary

MIB = 1 << 20


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def one_run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    size = args.size_mib * MIB
    c = SnapCluster(
        root,
        [
            "--machine=blob",
            f"--state-bytes={size}",
            "--snapshot-every=0",
            "--snapshot-interval-s=0",
            "--snapshot-log-margin=0",
            f"--snapshot-chunk-bytes={args.chunk_kib << 10}",
            f"--snapshot-window={args.window}",
            "--snapshot-transfer-timeout-ms=60000",
        ],
    )
    try:
        await c.start_all()
        lead = await c.leader()
        f = next(i for i in range(3) if i != lead)
        await c.kill(f)
        log(f"node{f} killed; writing and snapshotting on node{lead}")
        spec = {"ops": 1000, "concurrency": 100, "payload": 100, "warmup": 0, "progress": False}
        await c.run(lead, spec)
        snap = await c.snapshot(lead)
        assert snap["bytes"] >= size, snap
        log(f"snapshot at {snap['index']} ({snap['bytes']} bytes); restarting node{f}")
        t0 = time.monotonic()
        await c.start(f)
        # From its start-up RSS on: the install begins at the leader's next probe.
        sampler = RssSampler([c.child(lead).pid, c.child(f).pid])
        while True:
            st = await c.status(f)
            if st["snapshot"]["installs"] >= 1:
                break
            if time.monotonic() - t0 > args.timeout:
                raise RuntimeError(f"no install in {args.timeout} s: {st['snapshot']}")
            await asyncio.sleep(0.02)
        wall = time.monotonic() - t0
        growth = await sampler.stop()
        inst = st["snapshot"]["last_install"]
        return {
            "bytes": inst["bytes_total"],
            "install_s": inst["elapsed_s"],
            "mib_s": inst["bytes_total"] / MIB / inst["elapsed_s"],
            "restart_to_installed_s": wall,
            "leader_rss_growth_mib": growth[c.child(lead).pid] / MIB,
            "follower_rss_growth_mib": growth[c.child(f).pid] / MIB,
        }
    finally:
        await c.stop()


async def amain(args: argparse.Namespace) -> None:
    runs = []
    for k in range(args.runs):
        with tempfile.TemporaryDirectory(dir=args.data_root) as root:
            r = await one_run(args, root)
        runs.append(r)
        print(json.dumps({"run": k + 1, **{a: round(b, 3) for a, b in r.items()}}), flush=True)
    print(
        f"install of {args.size_mib} MiB, chunk {args.chunk_kib} KiB, window {args.window}, "
        f"{args.runs} runs: {summary([r['mib_s'] for r in runs])} MiB/s "
        f"({summary([r['install_s'] for r in runs], 2)} s); RSS growth leader "
        f"{summary([r['leader_rss_growth_mib'] for r in runs])} MiB, follower "
        f"{summary([r['follower_rss_growth_mib'] for r in runs])} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300, help="per install (s)")
    ap.add_argument("--data-root", default=None, help="parent of the temporary data directories")
    args = ap.parse_args()
    if args.data_root:
        os.makedirs(args.data_root, exist_ok=True)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
