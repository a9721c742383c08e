"""Restart time of nodes whose group has written ``--entries`` (10 million)
since it was created, with snapshots on, and the size their logs settled at.

Three `pyjraft.bench.server` processes (durable, loopback, the library's
snapshot defaults: a snapshot every 100,000 entries, a 10,000-entry margin,
64 MiB segments) take ``--entries`` writes of ``--payload`` bytes from a
closed loop on the leader. Then:

- each node's log directory size is compared with what the compaction
  bound allows: the margin plus the entries since the last snapshot, plus
  one segment;
- a follower is SIGKILLed and restarted ``--rounds`` times: time from
  spawning the process to its node running (storage opened, snapshot
  loaded: the bench server's ``ready``) and to having applied everything
  the leader had committed (serving reads of the current state);
- the whole group is SIGKILLed and restarted ``--rounds`` times: time from
  spawning to a leader that has applied everything and acknowledged a new
  write (with the default 1 s election timeout: a campaign waits 1-2 s).

    python benchmarks/snapshot_restart.py [--entries 10000000] [--rounds 5]
        [--payload 100] [--concurrency 1000] [--data-root DIR]
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

from pyjraft.bench.snapcluster import SnapCluster, dir_bytes, summary
from pyjraft.node import NodeOptions

MIB = 1 << 20


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def sizes(c: SnapCluster, args: argparse.Namespace) -> list[dict[str, Any]]:
    defaults = NodeOptions(id="a:1", peers=("a:1",))
    out = []
    for i in range(3):
        st = await c.status(i)
        snap = st["snapshot"]["index"]
        log_dir = os.path.join(c.data_dir(i), "default", "log")
        held = st["last_index"] - st["first_index"] + 1
        since = st["last_index"] - snap
        per_entry = dir_bytes(log_dir) / max(1, held)
        bound = (defaults.snapshot_log_margin + since) * per_entry + defaults.segment_bytes
        out.append(
            {
                "node": i,
                "snapshot_index": snap,
                "first_index": st["first_index"],
                "last_index": st["last_index"],
                "log_mib": dir_bytes(log_dir) / MIB,
                "snapshot_mib": dir_bytes(os.path.join(c.data_dir(i), "default", "snapshot")) / MIB,
                "bound_mib": bound / MIB,
            }
        )
    return out


async def restart_follower(c: SnapCluster, lead: int) -> dict[str, float]:
    f = next(i for i in range(3) if i != lead)
    target = (await c.status(lead))["commit_index"]
    await c.kill(f)
    t0 = time.monotonic()
    await c.start(f)
    ready = time.monotonic() - t0
    while (await c.status(f))["applied_index"] < target:
        await asyncio.sleep(0.005)
    return {"ready_s": ready, "caught_up_s": time.monotonic() - t0}


async def restart_all(c: SnapCluster) -> dict[str, float]:
    for i in range(3):
        await c.kill(i)
    t0 = time.monotonic()
    await asyncio.gather(*(c.start(i) for i in range(3)))
    ready = time.monotonic() - t0
    lead = await c.leader(60)
    await c.run(lead, {"ops": 1, "concurrency": 1, "payload": 100, "warmup": 0, "progress": False})
    return {"ready_s": ready, "serving_s": time.monotonic() - t0, "leader": lead}


async def amain(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.data_root) as root:
        c = SnapCluster(root, [], hours=6)
        try:
            await c.start_all()
            lead = await c.leader(60)
            log(f"writing {args.entries} entries through node{lead}")
            t0 = time.monotonic()
            spec = {
                "ops": args.entries,
                "concurrency": args.concurrency,
                "payload": args.payload,
                "warmup": 0,
                "progress": False,
            }
            res = await c.run(lead, spec, timeout=6 * 3600)
            log(f"written in {time.monotonic() - t0:.0f} s ({len(res['lat_us'])} acknowledged)")
            await asyncio.sleep(2)  # the followers apply the tail
            for s in await sizes(c, args):
                print(json.dumps({"log": {k: round(v, 1) for k, v in s.items()}}), flush=True)
            followers, groups = [], []
            for k in range(args.rounds):
                lead = await c.leader(60)
                r = await restart_follower(c, lead)
                followers.append(r)
                print(json.dumps({"follower_restart": k + 1, **r}), flush=True)
            for k in range(args.rounds):
                r = await restart_all(c)
                groups.append(r)
                print(json.dumps({"group_restart": k + 1, **r}), flush=True)
            for s in await sizes(c, args):
                print(json.dumps({"log_after": {k: round(v, 1) for k, v in s.items()}}), flush=True)
        finally:
            await c.stop()
    print(
        f"{args.entries} entries: follower restart to running "
        f"{summary([r['ready_s'] for r in followers], 2)} s, to caught up "
        f"{summary([r['caught_up_s'] for r in followers], 2)} s; whole group restart to "
        f"running {summary([r['ready_s'] for r in groups], 2)} s, to a write acknowledged "
        f"{summary([r['serving_s'] for r in groups], 2)} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--data-root", default=None, help="parent of the temporary data directories")
    args = ap.parse_args()
    if args.data_root:
        os.makedirs(args.data_root, exist_ok=True)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
