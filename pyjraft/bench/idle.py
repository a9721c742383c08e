"""An idle cluster's cost: CPU from ``/proc`` over a window, and RSS per node."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from pyjraft.bench.children import Cluster
from pyjraft.bench.runs import await_leader


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state) of proc(5); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid: int) -> int | None:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


async def measure_idle(cluster: Cluster, seconds: float) -> dict[str, Any]:
    """CPU of the cluster's processes over ``seconds`` of idleness: ``/proc`` is
    read once at the start and once at the end of the window, and nothing is
    sent to the processes in between."""
    pids = [c.pid for c in cluster.children]
    t0 = time.perf_counter()
    cpu0 = [proc_cpu_s(p) for p in pids]
    await asyncio.sleep(seconds)
    cpu1 = [proc_cpu_s(p) for p in pids]
    wall = time.perf_counter() - t0
    rss = [proc_rss_kib(p) for p in pids]
    used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    return {
        "idle_s": round(wall, 3),
        "idle_cpu_s": round(sum(used), 3),
        "idle_cpu_pct_of_core": round(sum(used) / wall * 100.0, 3),
        "idle_cpu_pct_per_node": [round(u / wall * 100.0, 3) for u in used],
        "rss_kib_per_node": rss,
        "node_pids": pids,
        "cpu_resolution_pct": round(tick / wall * 100.0, 3),
    }


async def run_idle_pyjraft(
    args: argparse.Namespace, tmp: str, deadline: float, out: dict[str, Any]
) -> None:
    """Start the pyjraft cluster, wait for a leader, measure it idle; fill ``out``."""
    cluster = await Cluster.start_pyjraft(args, tmp, deadline)
    try:
        leader, ls = await await_leader(cluster, deadline, out)
        sys.stderr.write(f"pyjraft leader {leader.addr} pid {leader.pid}; idle {args.idle} s\n")
        out.update(await measure_idle(cluster, args.idle))
        sts = await cluster.statuses()
        out["leader_pid_index"] = out["leader_node"] = out["node_pids"].index(leader.pid)
        out["leader_unchanged"] = all(s_["leader"] == leader.addr for s_ in sts) and all(
            s_["term"] == ls["term"] for s_ in sts
        )
    finally:
        await cluster.stop()


async def run_idle_pysyncobj(
    config: str, seconds: float, tmp: str, deadline: float
) -> dict[str, Any]:
    """Start a PySyncObj cluster in configuration ``config`` and measure it idle."""
    cluster = await Cluster.start_pysyncobj(config, tmp, deadline)
    try:
        leader, _ = await cluster.wait_leader(max(1.0, deadline - time.time()))
        d = await measure_idle(cluster, seconds)
        d["leader_pid_index"] = d["node_pids"].index(leader.pid)
        d["config"] = config
        return d
    finally:
        await cluster.stop()
