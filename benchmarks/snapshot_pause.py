"""What a snapshot save of a large state machine costs the writes going on
meanwhile: p99 write latency during the save against without one.

Three `pyjraft.bench.server` processes (durable, loopback), each replica a
`pyjraft.bench.machines.PagedMachine` holding ``--state-mib`` MiB in memory
(4 KiB pages, snapshots captured copy-on-write and written by a worker
thread). Snapshots are taken on demand only. Each round is a pair of runs,
in alternating order: a closed-loop run of ``--seconds`` on the leader with
``--concurrency`` writes in flight and no snapshot (the control), and the
same run during which, ``--at`` seconds in, every replica (``--who all``,
as their entry counts would trigger together) or the leader alone is asked
for a snapshot. Writes of the second run that *started* while the leader's
save was under way (its capture to its publication, on the leader's clock)
are compared with the control run's writes: p50, p99, max. The capture
pause (applies stopped while the machine copies its page list) is reported
too. Medians and ranges over ``--rounds``.

    python benchmarks/snapshot_pause.py [--state-mib 1024] [--rounds 5]
        [--concurrency 32] [--seconds 12] [--at 2] [--who all|leader]
        [--data-root DIR]
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

from pyjraft.bench.children import Child
from pyjraft.bench.snapcluster import SnapCluster, percentile, summary

MIB = 1 << 20


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def replies(child: Child, want: dict[str, int], timeout: float) -> dict[str, list[Any]]:
    """Read ``child``'s replies until ``want[type]`` of each type arrived."""
    got: dict[str, list[Any]] = {t: [] for t in want}
    async with asyncio.timeout(timeout):
        while any(len(got[t]) < n for t, n in want.items()):
            obj = await child._lines.get()
            if obj is None:
                raise RuntimeError(f"{child.name} exited:\n{child.log_tail()}")
            if obj.get("type") in got:
                got[obj["type"]].append(obj)
    return got


def stats_ms(lat_us: list[int]) -> dict[str, float]:
    return {
        "n": len(lat_us),
        "p50": percentile(lat_us, 50) / 1000,
        "p99": percentile(lat_us, 99) / 1000,
        "max": max(lat_us) / 1000 if lat_us else float("nan"),
    }


async def control(c: SnapCluster, lead: int, spec: dict[str, Any]) -> dict[str, float]:
    res = await c.run(lead, spec)
    return stats_ms(res["lat_us"])


async def with_save(
    c: SnapCluster, lead: int, spec: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    leader = c.child(lead)
    leader.send({"cmd": "run", "spec": {**spec, "times": True}})
    await asyncio.sleep(args.at)
    who = range(3) if args.who == "all" else [lead]
    for i in who:
        c.child(i).send({"cmd": "snapshot"})
    others = [replies(c.child(i), {"snapshot": 1}, args.seconds * 10) for i in who if i != lead]
    mine, *theirs = await asyncio.gather(
        replies(leader, {"result": 1, "snapshot": 1}, args.seconds * 10), *others
    )
    res, snap = mine["result"][0], mine["snapshot"][0]
    if "error" in res or "error" in snap:
        raise RuntimeError(f"{res.get('error')} {snap.get('error')}")
    t0, t1 = snap["t0_ns"], snap["t1_ns"]
    during = [lat for lat, s in zip(res["lat_us"], res["start_ns"], strict=True) if t0 <= s <= t1]
    pauses = [snap["last_save"]["pause_ms"]] + [
        t["snapshot"][0]["last_save"]["pause_ms"] for t in theirs
    ]
    return {
        "during": stats_ms(during),
        "save_s": (t1 - t0) / 1e9,
        "bytes": snap["bytes"],
        "capture_pause_ms": max(pauses),
    }


async def amain(args: argparse.Namespace) -> None:
    spec = {
        "ops": 0,
        "duration_s": args.seconds,
        "concurrency": args.concurrency,
        "payload": args.payload,
        "warmup": 2000,
        "progress": False,
    }
    with tempfile.TemporaryDirectory(dir=args.data_root) as root:
        c = SnapCluster(
            root,
            [
                "--machine=paged",
                f"--state-bytes={args.state_mib * MIB}",
                "--snapshot-every=0",
                "--snapshot-interval-s=0",
                *([] if args.write_rate is None else [f"--snapshot-write-rate={args.write_rate}"]),
            ],
        )
        try:
            await c.start_all()
            lead = await c.leader(120)
            log(f"leader node{lead}; {args.rounds} rounds")
            rounds = []
            for k in range(args.rounds):
                first_control = k % 2 == 0
                ctrl = await control(c, lead, spec) if first_control else None
                save = await with_save(c, lead, spec, args)
                if ctrl is None:
                    ctrl = await control(c, lead, spec)
                r = {"round": k + 1, "control": ctrl, **save}
                r["p99_worse_ms"] = save["during"]["p99"] - ctrl["p99"]
                rounds.append(r)
                print(json.dumps(r, default=lambda x: round(x, 3)), flush=True)
        finally:
            await c.stop()
    print(
        f"{args.state_mib} MiB state, c={args.concurrency}, snapshots on {args.who}, write "
        f"rate {'default' if args.write_rate is None else args.write_rate}, "
        f"{args.rounds} rounds: save {summary([r['save_s'] for r in rounds], 2)} s, capture "
        f"pause {summary([r['capture_pause_ms'] for r in rounds], 2)} ms; p99 during the save "
        f"{summary([r['during']['p99'] for r in rounds], 2)} ms vs without "
        f"{summary([r['control']['p99'] for r in rounds], 2)} ms (worse by "
        f"{summary([r['p99_worse_ms'] for r in rounds], 2)} ms); p50 "
        f"{summary([r['during']['p50'] for r in rounds], 2)} vs "
        f"{summary([r['control']['p50'] for r in rounds], 2)} ms; max "
        f"{summary([r['during']['max'] for r in rounds], 1)} vs "
        f"{summary([r['control']['max'] for r in rounds], 1)} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--state-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--payload", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--at", type=float, default=2.0, help="seconds into the run to snapshot")
    ap.add_argument(
        "--write-rate",
        type=int,
        default=None,
        help="NodeOptions.snapshot_write_bytes_per_s of the nodes (default: the library's)",
    )
    ap.add_argument("--who", choices=["all", "leader"], default="all")
    ap.add_argument("--data-root", default=None, help="parent of the temporary data directories")
    args = ap.parse_args()
    if args.data_root:
        os.makedirs(args.data_root, exist_ok=True)
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
