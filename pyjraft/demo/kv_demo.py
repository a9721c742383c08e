"""``pyjraft demo``: a 3-replica key-value cluster through a leader crash, under load.

Steps: start three ``pyjraft kv serve`` processes on loopback; wait for a
leader; drive the mixed workload (`pyjraft.demo.workload`) with a live view;
SIGKILL the leader partway and measure the failover (time until a new
leader is elected, and until the first write started after the kill is
acknowledged); restart the killed replica from its data directory and let
it catch up under load; stop the load, wait until every replica has
applied the leader's commit index, read each replica's whole store with
serializable (local) reads and check every acknowledged write on each.

The summary gives operations, throughput, latency percentiles, the
failover, and the check. ``--quick`` runs the short version (well under a
minute) and prints as its last line one JSON object (`summary_json`). The
exit status is 0 when no acknowledged write is missing and no read was
stale, 1 otherwise, 130 on Ctrl-C (SIGINT) or SIGTERM, which stop
everything the demo started first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyjraft.bench.stats import summarize
from pyjraft.demo.display import LiveView
from pyjraft.demo.workload import KEY_PREFIX, MixedWorkload
from pyjraft.kv import Client
from pyjraft.testing.kv_cluster import KvProcessCluster, kv_serve_takes_tls

EXIT_LOST = 1
"""Exit status: an acknowledged write is missing or a read was stale (or the demo failed)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C or SIGTERM."""
EXIT_USAGE = 2


@dataclass(frozen=True, slots=True)
class Timeline:
    """Seconds of load before the kill, after it, and after the restart."""

    before_kill: float
    after_kill: float
    after_restart: float
    time_limit: float


QUICK = Timeline(before_kill=3.0, after_kill=4.0, after_restart=2.0, time_limit=50.0)
FULL = Timeline(before_kill=8.0, after_kill=8.0, after_restart=6.0, time_limit=90.0)


async def _poll_nodes(cluster: KvProcessCluster, view: LiveView, stop: asyncio.Event) -> None:
    while not stop.is_set():
        view.update(nodes=await cluster.statuses())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


async def _wait_new_leader(cluster: KvProcessCluster, old: str) -> dict[str, Any]:
    return await cluster.wait_leader(timeout=30, exclude=old, poll=0.02)


async def _verify(cluster: KvProcessCluster, w: MixedWorkload) -> dict[str, Any]:
    """Every replica applied up to the leader's commit index; then each one's
    store, read locally, holds every acknowledged write."""
    leader = await cluster.wait_leader(timeout=30)
    target = int(leader["commit_index"])
    for a in cluster.addrs:
        await cluster.wait_applied(a, target, timeout=30)
    stores: dict[str, dict[bytes, bytes]] = {}
    for a in cluster.addrs:
        node_client = Client([a], rpc=cluster.rpc, deadline=30)
        stores[a] = {
            kv.key: kv.value
            async for kv in node_client.scan_all(prefix=KEY_PREFIX, read="serializable")
        }
    return {"applied_index": target, **check_replicas(w.acked, w.unknown, stores)}


def check_replicas(
    acked: dict[bytes, bytes], unknown: dict[bytes, bytes], stores: dict[str, dict[bytes, bytes]]
) -> dict[str, Any]:
    """Check every acknowledged write (key -> value) against each replica's
    store: how many are missing (or hold another value) on any replica and on
    each, whether the replicas hold the same data, and how many writes of
    unknown outcome were applied."""
    lost: set[bytes] = set()
    per_node: dict[str, int] = {}
    for a, store in stores.items():
        missing = [k for k, v in acked.items() if store.get(k) != v]
        per_node[a] = len(missing)
        lost.update(missing)
    first = next(iter(stores.values()), {})
    return {
        "lost_acknowledged_writes": len(lost),
        "lost_per_node": per_node,
        "lost_examples": [k.decode(errors="replace") for k in sorted(lost)[:5]],
        "replicas_identical": all(s == first for s in stores.values()),
        "keys_per_node": {a: len(s) for a, s in stores.items()},
        "unknown_outcome_applied": sum(1 for k, v in unknown.items() if first.get(k) == v),
    }


async def _steps(
    args: argparse.Namespace, cluster: KvProcessCluster, view: LiveView, out: dict[str, Any]
) -> None:
    tl: Timeline = QUICK if args.quick else FULL
    view.event(f"starting 3 KV replicas: {', '.join(cluster.addrs)} (data in {cluster.base})")
    cluster.start_all()
    view.update(phase="electing a leader")
    st = await cluster.wait_leader(timeout=30)
    old = str(st["id"])
    view.event(f"leader elected: {old} (term {st['term']}) after {view.elapsed():.2f} s")
    client = Client(cluster.addrs, rpc=cluster.rpc, timeout=2.0, deadline=20.0)
    w = MixedWorkload(client, concurrency=args.concurrency, read_fraction=0.5, seed=args.seed)
    view.workload = w
    w.start()
    view.update(phase=f"mixed load: {args.concurrency} clients, half writes, half reads")
    await asyncio.sleep(tl.before_kill)

    view.update(phase="leader killed: failing over")
    w.kill_at = time.monotonic()
    cluster.kill(old)
    view.down.add(old)
    view.event(f"kill -9 the leader {old}")
    st = await _wait_new_leader(cluster, old)
    election_ms = (time.monotonic() - w.kill_at) * 1000
    view.event(f"new leader: {st['id']} (term {st['term']}) after {election_ms:.0f} ms")
    view.update(phase=f"load on the new leader {st['id']}")
    while w.first_write_after_kill is None and time.monotonic() - w.kill_at < 30:
        await asyncio.sleep(0.01)
    failover_ms = (
        None
        if w.first_write_after_kill is None
        else round((w.first_write_after_kill - w.kill_at) * 1000, 1)
    )
    view.event(
        "no write acknowledged within 30 s of the kill"
        if failover_ms is None
        else f"writes acknowledged again {failover_ms:.0f} ms after the kill"
    )
    out.update(election_ms=round(election_ms, 1), failover_ms=failover_ms, killed=old)
    await asyncio.sleep(max(0.0, tl.after_kill - (time.monotonic() - w.kill_at)))

    view.event(f"restarting {old} from its data directory")
    cluster.start(old)
    view.down.discard(old)
    view.update(phase=f"{old} catching up under load")
    t0 = time.monotonic()
    lst = await cluster.wait_leader(timeout=30)
    rst = await cluster.wait_applied(old, int(lst["commit_index"]), timeout=30)
    view.event(
        f"{old} caught up to index {rst['applied_index']:,} as {rst['role']} "
        f"in {time.monotonic() - t0:.2f} s"
    )
    await asyncio.sleep(tl.after_restart)
    view.update(phase="stopping the load")
    await w.stop()
    view.event(f"load stopped: {w.ops:,} operations")
    view.update(phase="checking every acknowledged write on every replica")
    out.update(await _verify(cluster, w))
    view.event(
        f"checked {len(w.acked):,} acknowledged writes on each replica: "
        f"{out['lost_acknowledged_writes']} missing"
    )
    out.update(_workload_summary(w))


def _workload_summary(w: MixedWorkload) -> dict[str, Any]:
    seconds = max(1e-9, w.stopped_at - w.started_at)
    both = summarize(w.puts.lat_us + w.gets.lat_us, 0, seconds)
    puts = summarize(w.puts.lat_us, w.puts.errors, seconds)
    gets = summarize(w.gets.lat_us, w.gets.errors, seconds)
    r = 3
    return {
        "ops": w.ops,
        "ops_per_s": round(w.ops / seconds, 1),
        "duration_s": round(seconds, 2),
        "writes": w.puts.ok,
        "reads": w.gets.ok,
        "p50_ms": round(both.p50_ms, r),
        "p90_ms": round(both.p90_ms, r),
        "p99_ms": round(both.p99_ms, r),
        "p999_ms": round(both.p999_ms, r),
        "max_ms": round(both.max_ms, r),
        "write_p50_ms": round(puts.p50_ms, r),
        "write_p99_ms": round(puts.p99_ms, r),
        "read_p50_ms": round(gets.p50_ms, r),
        "read_p99_ms": round(gets.p99_ms, r),
        "acknowledged_writes": len(w.acked),
        "unknown_outcome_writes": len(w.unknown),
        "failed_operations": w.puts.errors + w.gets.errors,
        "error_reasons": dict(w.error_reasons),
        "stale_reads": len(w.stale_reads),
        "stale_read_examples": [
            [k.decode(errors="replace"), e.decode(errors="replace"), repr(g)]
            for k, e, g in w.stale_reads[:5]
        ],
        "concurrency": w.concurrency,
    }


def print_summary(view: LiveView, out: dict[str, Any]) -> None:
    """The human-readable summary."""
    c = view.console
    ok = out.get("ok")
    c.rule("summary")
    rows = [
        ("operations", f"{out['ops']:,} ({out['writes']:,} writes, {out['reads']:,} reads)"),
        ("throughput", f"{out['ops_per_s']:,.0f} ops/s over {out['duration_s']:.1f} s"),
        (
            "latency (ms)",
            f"p50 {out['p50_ms']:.2f}  p90 {out['p90_ms']:.2f}  p99 {out['p99_ms']:.2f}"
            f"  p99.9 {out['p999_ms']:.2f}  max {out['max_ms']:.1f}",
        ),
        (
            "  writes / reads",
            f"p50 {out['write_p50_ms']:.2f} / {out['read_p50_ms']:.2f}"
            f"  p99 {out['write_p99_ms']:.2f} / {out['read_p99_ms']:.2f}",
        ),
        (
            "failover",
            f"new leader elected {out['election_ms']:.0f} ms after the kill; writes "
            f"acknowledged again after {_ms(out['failover_ms'])}",
        ),
        (
            "outcomes",
            f"{out['unknown_outcome_writes']} writes of unknown outcome (in flight at the kill; "
            f"{out['unknown_outcome_applied']} of them applied), "
            f"{out['failed_operations']} failed before being proposed",
        ),
        ("stale reads", str(out["stale_reads"])),
        (
            "acknowledged writes",
            f"{out['acknowledged_writes']:,} checked on each of 3 replicas: "
            f"{out['lost_acknowledged_writes']} missing"
            + ("; replicas identical" if out["replicas_identical"] else "; REPLICAS DIFFER"),
        ),
    ]
    for name, value in rows:
        c.print(f"  {name:<20} {value}", highlight=False)
    verdict = (
        "[bold green]no acknowledged write was lost, no read was stale[/]"
        if ok
        else "[bold red]FAILED: acknowledged writes missing or stale reads[/]"
    )
    c.print(f"==> {verdict}")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


SUMMARY_KEYS = (
    "ops",
    "ops_per_s",
    "failover_ms",
    "election_ms",
    "lost_acknowledged_writes",
    "stale_reads",
    "acknowledged_writes",
    "unknown_outcome_writes",
    "unknown_outcome_applied",
    "failed_operations",
    "writes",
    "reads",
    "duration_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "p999_ms",
    "max_ms",
    "write_p50_ms",
    "write_p99_ms",
    "read_p50_ms",
    "read_p99_ms",
    "replicas_identical",
    "concurrency",
    "tls",
    "ok",
)


def summary_json(out: dict[str, Any]) -> str:
    """The ``--quick`` last line: the summary's figures as one JSON object."""
    return json.dumps({k: out.get(k) for k in SUMMARY_KEYS if k in out}, sort_keys=False)


async def run_kv_demo(args: argparse.Namespace) -> int:
    """Run the demo (see the module doc); its exit status."""
    if args.tls and not kv_serve_takes_tls():
        print(
            "pyjraft demo --tls: this build's `pyjraft kv serve` takes no --tls-cert/--tls-key/"
            "--tls-ca options yet; `pyjraft demo --counter --tls` shows the counter over "
            "mutual TLS",
            file=sys.stderr,
        )
        return EXIT_USAGE
    base = Path(tempfile.mkdtemp(prefix="pyjraft-demo-"))
    pid_file = args.pid_file

    def on_spawn(pid: int) -> None:
        if pid_file:
            with open(pid_file, "a") as f:
                f.write(f"{pid}\n")

    cluster = KvProcessCluster(
        base,
        group="demo",
        election_timeout_ms=args.election_timeout_ms,
        on_spawn=on_spawn,
        tls=args.tls,
        client_name="demo",
    )
    mode = "over mutual TLS" if args.tls else "plaintext on loopback"
    view = LiveView(f"pyjraft demo: a 3-replica key-value store, {mode}")
    out: dict[str, Any] = {"tls": bool(args.tls)}
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    interrupted = False

    def interrupt() -> None:
        nonlocal interrupted
        interrupted = True
        if task is not None:
            task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    poll_stop = asyncio.Event()
    poller = asyncio.create_task(_poll_nodes(cluster, view, poll_stop))
    code = EXIT_LOST
    view.start()
    try:
        async with asyncio.timeout((QUICK if args.quick else FULL).time_limit):
            await _steps(args, cluster, view, out)
        out["ok"] = out["lost_acknowledged_writes"] == 0 and out["stale_reads"] == 0
        code = 0 if out["ok"] else EXIT_LOST
    except asyncio.CancelledError:
        if not interrupted:
            raise
        code = EXIT_INTERRUPTED
    except Exception as e:
        view.stop()
        print(f"demo failed: {type(e).__name__}: {e}", file=sys.stderr)
        print(cluster.log_tails(), file=sys.stderr)
        code = EXIT_LOST
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        poll_stop.set()
        poller.cancel()
        await asyncio.gather(poller, return_exceptions=True)
        if view.workload is not None:
            await view.workload.cancel()
        view.stop()
        await cluster.close()
        await asyncio.to_thread(cluster.stop_all)
        if args.keep:
            print(f"(data and logs kept in {base})")
        else:
            shutil.rmtree(base, ignore_errors=True)
    if code == EXIT_INTERRUPTED:
        print("interrupted: every replica the demo started is stopped", file=sys.stderr)
        return code
    if "ok" in out:
        print_summary(view, out)
        if args.quick or args.json:
            print(summary_json(out), flush=True)
    return code


__all__ = [
    "FULL",
    "QUICK",
    "Timeline",
    "check_replicas",
    "print_summary",
    "run_kv_demo",
    "summary_json",
]
