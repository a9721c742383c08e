"""The benchmark's report: the issue's goals judged on a run, and the tables."""

from __future__ import annotations

import argparse
import math
from typing import Any

DURABILITY_SYNC = "durable: leader and a majority fdatasync each entry before the ack"
DURABILITY_NOSYNC = (
    "--no-sync: written, never fsynced (UNSAFE: a majority power loss loses acked writes)"
)
DURABILITY_PSO = "in-memory journal: nothing is ever written to disk"


def warmup_ops(args: argparse.Namespace) -> int:
    """Unmeasured writes before the measured ones."""
    if args.warmup is not None:
        return int(args.warmup)
    return int(min(2000, max(args.ops // 10, 2 * args.concurrency)))


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


PSO_CONFIGS = ("default", "tuned", "unbatched")
"""PySyncObj configurations ``--compare`` can run (see `pyjraft.bench.pso_server.CONFIGS`)."""

PSO_NAMES = {
    "default": "PySyncObj 0.3.17 defaults",
    "tuned": "PySyncObj tuned 5 ms",
    "unbatched": "PySyncObj unbatched 5 ms",
}

DURABILITY_TAGS = {
    DURABILITY_SYNC: "fdatasync",
    DURABILITY_NOSYNC: "no fsync (UNSAFE)",
    DURABILITY_PSO: "memory only",
}

GOAL_P50_VS_FLOOR = 3.0
"""Durable: p50 at concurrency 1 at most this many times the floor."""
GOAL_P50_VS_PYSYNCOBJ = 1.0
"""Sync off: p50 at concurrency 1 at most PySyncObj's best p50 times this."""
GOAL_RATIO_SYNC = 1.5
GOAL_RATIO_NOSYNC = 2.0
"""Throughput: pyjraft over the better PySyncObj configuration, durable and sync off."""
GOAL_DISK_BW = 0.7
"""Durable, 4 KiB payloads: share of the disk's raw fdatasync bandwidth at the same batch size."""
GOAL_IDLE_CPU_PCT = 2.0
"""Idle 3-node cluster: total CPU, percent of one core."""


def _goal(
    value: float | None, op: str, target: float, applies: bool, **numbers: Any
) -> dict[str, Any]:
    met = None if value is None else (value <= target if op == "<=" else value >= target)
    return {"value": value, "goal": f"{op} {target:g}", "met": met, "applies": applies, **numbers}


def compute_goals(args: argparse.Namespace, out: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals this run can judge, each with the numbers behind it.
    ``applies`` is False when the run's shape is not the one the goal is stated
    for (latency goals: concurrency 1; disk bandwidth: payloads of 4 KiB or more)."""
    goals: dict[str, Any] = {}
    p50 = out.get("p50_ms")
    c1 = args.concurrency == 1
    if not args.no_sync and p50 is not None and out.get("floor_ms"):
        v = round(p50 / out["floor_ms"], 3)
        shared = out.get("shared_floor_ms")
        goals["p50_vs_floor"] = _goal(
            v,
            "<=",
            GOAL_P50_VS_FLOOR,
            c1,
            p50_ms=p50,
            floor_ms=out["floor_ms"],
            shared_floor_ms=shared,
            p50_vs_shared_floor=round(p50 / shared, 3) if shared else None,
        )
    best_p50 = out.get("pysyncobj_best_p50_ms")
    if args.no_sync and p50 is not None and best_p50:
        v = round(p50 / best_p50, 3)
        goals["p50_vs_pysyncobj"] = _goal(
            v,
            "<=",
            GOAL_P50_VS_PYSYNCOBJ,
            c1,
            p50_ms=p50,
            pysyncobj_best_p50_ms=best_p50,
            pysyncobj_best_p50_config=out.get("pysyncobj_best_p50_config"),
            pysyncobj_unbatched_p50_ms=out.get("pysyncobj_unbatched_p50_ms"),
        )
    if "ratio" in out:
        goals["ratio"] = _goal(
            out["ratio"],
            ">=",
            GOAL_RATIO_NOSYNC if args.no_sync else GOAL_RATIO_SYNC,
            True,
            ops_per_s=round(out["ops_per_s"], 1),
            pysyncobj_ops_per_s=round(out["pysyncobj_ops_per_s"], 1),
            pysyncobj_best=out["pysyncobj_best"],
        )
    if "disk_bw_ratio" in out:
        goals["disk_bw_ratio"] = _goal(
            out["disk_bw_ratio"],
            ">=",
            GOAL_DISK_BW,
            args.payload >= 4096,
            leader_log_mb_s=out["leader_log_mb_s"],
            raw_sync_bw_mb_s=out["raw_sync_bw_mb_s"],
            raw_sync_batch_bytes=out["raw_sync_batch_bytes"],
            disk_bw_ratio_framed=out.get("disk_bw_ratio_framed"),
            # Not the goal's measure (that is one writer alone), but the limit of
            # 3 replicas on one disk: the leader log against one writer's share.
            disk_bw_ratio_shared=out.get("disk_bw_ratio_shared"),
        )
    return goals


def _goal_lines(goals: dict[str, Any]) -> list[str]:
    lines = []
    for name, g in goals.items():
        verdict = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        if not g["applies"]:
            verdict += " (not the goal's setting: informational)"
        lines.append(f"goal {name} {g['goal']}: {_fmt(g['value'], 3)}  {verdict}")
        if g.get("p50_vs_shared_floor") is not None:
            lines.append(
                f"  against the shared-disk floor: {_fmt(g['p50_vs_shared_floor'], 3)}"
                " (informational)"
            )
    return lines


def render_table(args: argparse.Namespace, out: dict[str, Any]) -> str:
    """The human-readable report."""
    durability = DURABILITY_NOSYNC if args.no_sync else DURABILITY_SYNC
    rows: list[tuple[str, dict[str, Any], str]] = [
        (f"pyjraft ({'no-sync' if args.no_sync else 'durable'}, {args.placement})", out, durability)
    ]
    failed: list[str] = []
    for tag in PSO_CONFIGS:
        d = out.get(f"pysyncobj_{tag}")
        if isinstance(d, dict):
            rows.append((PSO_NAMES[tag], d, DURABILITY_PSO))
            if "error" in d:
                failed.append(f"{PSO_NAMES[tag]}: FAILED: {d['error']}")
    measured = (
        f"{args.ops} measured writes"
        if args.duration is None
        else f"writes measured for {args.duration:g} s"
    )
    lines = [
        f"3 processes on loopback, payload {args.payload} B, concurrency {args.concurrency}, "
        f"{measured} (+{warmup_ops(args)} warmup writes), loop {args.loop}",
        f"{'implementation':<28}{'writes/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'cpu us/w':>10}  durability",
    ]
    for name, d, dur in rows:
        lines.append(
            f"{name:<28}{_fmt(d.get('ops_per_s'), 0):>10}{_fmt(d.get('p50_ms')):>9}"
            f"{_fmt(d.get('p99_ms')):>9}{_fmt(d.get('p999_ms')):>10}"
            f"{_fmt(d.get('leader_cpu_us_per_write'), 0):>10}  {DURABILITY_TAGS[dur]}"
        )
    lines += failed
    for dur in dict.fromkeys(r[2] for r in rows):
        lines.append(f"  {DURABILITY_TAGS[dur]}: {dur}")
    if "ratio" in out:
        lines.append(
            f"ratio pyjraft / better PySyncObj ({out['pysyncobj_best']}): {out['ratio']:.2f}x"
        )
    if out.get("pysyncobj_best_p50_ms") is not None:
        lines.append(
            f"lowest PySyncObj p50: {out['pysyncobj_best_p50_ms']:.3f} ms "
            f"({out['pysyncobj_best_p50_config']})"
        )
    fl = out.get("floor")
    if isinstance(fl, dict):
        lines.append(
            f"durable latency floor at concurrency 1: fdatasync {fl['fdatasync_p50_ms']:.3f} ms"
            f" + loopback TCP RTT {fl['tcp_rtt_p50_ms']:.3f} ms = {fl['floor_ms']:.3f} ms"
            f" (pyjraft RPC round trip {fl['rpc_rtt_p50_ms']:.3f} ms)"
        )
        if "shared_floor_ms" in fl:
            lines.append(
                "the same with the disk shared by 3 writers at once"
                f"{' (as the 3 nodes share it)' if out.get('nodes_share_disk') else ''}:"
                f" fdatasync {fl['fdatasync_shared_p50_ms']:.3f} ms"
                f" + RTT = {fl['shared_floor_ms']:.3f} ms"
            )
    if "raw_sync_bw_mb_s" in out:
        lines.append(
            f"disk, raw append+fdatasync of {out['raw_sync_batch_bytes']} B"
            f" (writes/sync x payload): {out['raw_sync_bw_mb_s']:.2f} MB/s,"
            f" {out['raw_syncs_per_s']:,.0f} syncs/s"
        )
        lines.append(
            f"pyjraft leader log: {out['leader_log_mb_s']:.2f} MB/s"
            f" ({out['leader_log_mb_s_framed']:.2f} with framing),"
            f" {out['leader_syncs_per_s']:,.0f} syncs/s = {_fmt(out.get('disk_bw_ratio'), 3)}"
            f" of raw ({_fmt(out.get('disk_bw_ratio_framed'), 3)} with framing;"
            + (
                " all 3 nodes write to this disk)"
                if out.get("nodes_share_disk")
                else " the other nodes' data roots are on other devices)"
            )
        )
    if "raw_sync_bw_shared_mb_s" in out:
        lines.append(
            f"disk shared by 3 such writers at once: {out['raw_sync_bw_shared_mb_s']:.2f} MB/s"
            f" each; the leader log is {_fmt(out.get('disk_bw_ratio_shared'), 3)} of that share"
            f" ({_fmt(out.get('disk_bw_ratio_shared_framed'), 3)} with framing)"
        )
    lines += _goal_lines(out.get("goals", {}))
    return "\n".join(lines)


def render_idle(out: dict[str, Any]) -> str:
    """The human-readable report of ``--idle``."""
    lines = [
        f"idle 3-node clusters on loopback, {out.get('idle_s', '-')} s window, CPU from /proc"
        f" (resolution {_fmt(out.get('cpu_resolution_pct'), 2)} % of a core per process)",
        f"{'implementation':<28}{'cpu % of a core':>16}  per node (%)          RSS per node (MiB)",
    ]
    rows: list[tuple[str, dict[str, Any]]] = [
        (f"pyjraft ({'no-sync' if out.get('sync') is False else 'durable'})", out)
    ]
    for tag in PSO_CONFIGS:
        d = out.get(f"pysyncobj_{tag}_idle")
        if isinstance(d, dict):
            rows.append((PSO_NAMES[tag], d))
    for name, d in rows:
        if "idle_cpu_pct_of_core" not in d:
            lines.append(f"{name:<28}{'-':>16}  {d.get('error', '')}")
            continue
        per = ", ".join(f"{x:.2f}" for x in d["idle_cpu_pct_per_node"])
        rss = ", ".join("-" if x is None else f"{x / 1024:.1f}" for x in d["rss_kib_per_node"])
        lines.append(f"{name:<28}{d['idle_cpu_pct_of_core']:>16.2f}  {per:<22}{rss}")
    lines += _goal_lines(out.get("goals", {}))
    return "\n".join(lines)


def _compare(out: dict[str, Any]) -> None:
    """Per-configuration figures, and the better PySyncObj: highest writes/s for
    ``ratio``, and separately the lowest p50 of any configuration."""
    tputs: list[tuple[float, str]] = []
    p50s: list[tuple[float, str]] = []
    for tag in PSO_CONFIGS:
        d = out.get(f"pysyncobj_{tag}")
        if not isinstance(d, dict):
            continue
        for k in ("ops_per_s", "p50_ms", "p99_ms"):
            out[f"pysyncobj_{tag}_{k}"] = d.get(k)
        v, p50 = d.get("ops_per_s"), d.get("p50_ms")
        if v:
            tputs.append((v, tag))
        if isinstance(p50, float) and not math.isnan(p50) and d.get("ok"):
            p50s.append((p50, tag))
    if p50s:
        best_p50, best_p50_tag = min(p50s)
        out["pysyncobj_best_p50_ms"] = best_p50
        out["pysyncobj_best_p50_config"] = best_p50_tag
    if not tputs:
        return
    best_v, best = max(tputs)
    b = out[f"pysyncobj_{best}"]
    out["pysyncobj_best"] = best
    out["pysyncobj_ops_per_s"] = best_v
    out["pysyncobj_p50_ms"] = b.get("p50_ms")
    out["pysyncobj_p99_ms"] = b.get("p99_ms")
    out["pysyncobj_p999_ms"] = b.get("p999_ms")
    out["pysyncobj_durability"] = DURABILITY_PSO
    if out.get("ops_per_s"):
        out["ratio"] = round(out["ops_per_s"] / best_v, 3)
