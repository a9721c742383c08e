"""One measured run of each implementation under load: pyjraft (leader or client
placement, with the latency floor, metrics scraping and the disk's raw
bandwidth) and PySyncObj."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from pyjraft.bench import floor
from pyjraft.bench.children import CLIENT_TLS, Child, Cluster
from pyjraft.bench.report import warmup_ops
from pyjraft.bench.stats import percentile, summarize


class Progress:
    """A single self-overwriting progress line on stderr."""

    def __init__(self, label: str, total: int, duration_s: float | None = None) -> None:
        self.label = label
        self.total = total
        self.duration_s = duration_s
        self.t0 = time.perf_counter()

    def __call__(self, done: int) -> None:
        """Show ``done`` of ``total`` (or the seconds gone of ``duration_s``)."""
        dt = time.perf_counter() - self.t0
        rate = done / dt if dt > 0 else 0.0
        if self.duration_s is None:
            of = f"{done}/{self.total} ops"
        else:
            of = f"{done} ops, {min(dt, self.duration_s):.0f}/{self.duration_s:g} s"
        sys.stderr.write(f"\r[{self.label}] {of}  {rate:,.0f} ops/s   ")
        sys.stderr.flush()

    def end(self, text: str) -> None:
        """Finish the line with ``text``."""
        sys.stderr.write(f"\r[{self.label}] {text}\n")
        sys.stderr.flush()


async def client_workload(
    addr: str, spec: dict[str, Any], progress: Progress | None
) -> dict[str, Any]:
    """The ``--placement client`` load: ``concurrency`` callers in this process,
    each ``await RpcClient.call(leader, "bench.apply", payload)`` in a loop."""
    from pyjraft.transport.tcp import RpcClient

    payload = os.urandom(int(spec["payload"]))
    conc = max(1, int(spec["concurrency"]))
    rpc = RpcClient(tls=CLIENT_TLS[0])

    async def phase(
        n: int, lat: list[int], errors: dict[str, int], duration_s: float | None = None
    ) -> float:
        clock = time.perf_counter_ns
        # With a duration, no new write starts after it; those in flight finish.
        stop_at = None if duration_s is None else clock() + int(duration_s * 1e9)
        todo = iter(range(n)) if stop_at is None else itertools.count()

        async def worker() -> None:
            for _ in todo:
                t0 = clock()
                if stop_at is not None and t0 >= stop_at:
                    return
                try:
                    await rpc.call(addr, "bench.apply", payload, timeout=30.0)
                except Exception as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                lat.append((clock() - t0) // 1000)

        t0 = time.perf_counter()
        callers = conc if stop_at is not None else min(conc, n)
        await asyncio.gather(*(worker() for _ in range(callers)))
        return time.perf_counter() - t0

    try:
        if spec["warmup"]:
            await phase(int(spec["warmup"]), [], {})
        lat: list[int] = []
        errors: dict[str, int] = {}

        async def report() -> None:
            while progress is not None:
                await asyncio.sleep(1.0)
                progress(len(lat) + sum(errors.values()))

        reporter = asyncio.create_task(report())
        try:
            elapsed = await phase(int(spec["ops"]), lat, errors, spec.get("duration_s"))
        finally:
            reporter.cancel()
        return {"type": "result", "lat_us": lat, "errors": errors, "elapsed_s": elapsed}
    finally:
        await rpc.close()


async def measure_floor(tmp: str, leader: Child) -> dict[str, Any]:
    """fdatasync of a small append in ``tmp`` + a raw loopback TCP round trip to
    an echo thread in the leader's process + an RPC round trip through
    pyjraft's transport (``bench.ping``)."""
    from pyjraft.transport.tcp import RpcClient

    sync_us = await asyncio.to_thread(floor.fdatasync_us, tmp)
    shared_us = await asyncio.to_thread(floor.fdatasync_us, tmp, 200, 100, 3)
    port = int((await leader.request({"cmd": "echo"}, "echo", 10.0))["port"])
    rtt_us = await asyncio.to_thread(floor.tcp_rtt_us, port)
    rpc = RpcClient(tls=CLIENT_TLS[0])
    rpc_us: list[int] = []
    try:
        for _ in range(300):
            t0 = time.perf_counter_ns()
            await rpc.call(leader.addr, "bench.ping", b"z" * 100)
            rpc_us.append((time.perf_counter_ns() - t0) // 1000)
    finally:
        await rpc.close()

    def p50_ms(xs: list[int]) -> float:
        return percentile(sorted(xs), 50) / 1000.0

    def p99_ms(xs: list[int]) -> float:
        return percentile(sorted(xs), 99) / 1000.0

    f = p50_ms(sync_us)
    r = p50_ms(rtt_us)
    fs = p50_ms(shared_us)
    return {
        "fdatasync_p10_ms": round(percentile(sorted(sync_us), 10) / 1000.0, 4),
        "fdatasync_p50_ms": round(f, 4),
        "fdatasync_p99_ms": round(p99_ms(sync_us), 4),
        "tcp_rtt_p50_ms": round(r, 4),
        "tcp_rtt_p99_ms": round(p99_ms(rtt_us), 4),
        "rpc_rtt_p50_ms": round(p50_ms(rpc_us), 4),
        "floor_ms": round(f + r, 4),
        "fdatasync_shared_p50_ms": round(fs, 4),
        "shared_floor_ms": round(fs + r, 4),
    }


async def await_leader(
    cluster: Cluster, deadline: float, out: dict[str, Any]
) -> tuple[Child, dict[str, Any]]:
    """Wait for the cluster's leader; record the pids and how long it took."""
    out["node_pids"] = [c.pid for c in cluster.children]
    t0 = time.time()
    found = await cluster.wait_leader(max(1.0, deadline - time.time()))
    out["leader_wait_s"] = round(time.time() - t0, 3)
    out["leader_pid"] = found[0].pid
    return found


async def run_pyjraft(
    args: argparse.Namespace, tmp: str, deadline: float, out: dict[str, Any]
) -> None:
    """Start the pyjraft cluster, measure the floor, run the workload; fill ``out``."""
    cluster = await Cluster.start_pyjraft(args, tmp, deadline)
    scraper: MetricsScraper | None = None
    try:
        leader, _ = await await_leader(cluster, deadline, out)
        sys.stderr.write(f"pyjraft leader {leader.addr} pid {leader.pid}\n")
        out["leader_node"] = cluster.children.index(leader)
        fl = await measure_floor(args.node_parents[out["leader_node"]], leader)
        out["floor"] = fl
        out["floor_ms"] = fl["floor_ms"]
        out["shared_floor_ms"] = fl["shared_floor_ms"]
        label = f"pyjraft {'no-sync' if args.no_sync else 'durable'} {args.placement}"
        spec: dict[str, Any] = {
            "ops": args.ops,
            "duration_s": args.duration,
            "warmup": warmup_ops(args),
            "concurrency": args.concurrency,
            "payload": args.payload,
            "profile": os.path.abspath(args.profile) if args.profile else None,
            "api": args.api,
        }
        out["api"] = args.api
        progress = Progress(label, args.ops, args.duration)
        leader.on_progress = progress
        st0 = await leader.request({"cmd": "status"}, "status", 10.0)
        left = max(1.0, deadline - time.time())
        if args.metrics:
            scraper = MetricsScraper(args.http_addrs, args.metrics_scrape_s)
            scraper.start()
        if args.placement == "leader":
            res = await leader.request({"cmd": "run", "spec": spec}, "result", left)
        else:
            res = await asyncio.wait_for(client_workload(leader.addr, spec, progress), left)
        if scraper is not None:
            out["metrics_scrapes"] = await scraper.stop()
        st1 = await leader.request({"cmd": "status"}, "status", 10.0)
        cpu0, cpu1 = st0["cpu_s"], st1["cpu_s"]
        if "node_stats" not in res and "node_stats" in st1:
            # --placement client: the leader's counters from its status before and after;
            # they include the warmup writes (run by client_workload), so writes_per_sync
            # is an average over warmup and measured writes.
            ns0 = st0.get("node_stats", {})
            res["node_stats"] = {k: v - ns0.get(k, 0) for k, v in st1["node_stats"].items()}
            out["node_stats_include_warmup"] = True
        if "error" in res:
            raise RuntimeError(f"pyjraft workload failed: {res['error']}")
        s = summarize(res["lat_us"], sum(res["errors"].values()), res["elapsed_s"])
        progress.end(f"{s.ok} ok, {s.errors} errors, {s.ops_per_s:,.0f} ops/s")
        out.update(s.as_dict())
        out["error_reasons"] = res["errors"]
        cpu = float(res.get("cpu_s", cpu1 - cpu0))
        out["leader_cpu_s"] = round(cpu, 3)
        out["leader_cpu_us_per_write"] = round(cpu / s.ok * 1e6, 1) if s.ok else None
        if "gc" in res:
            out["leader_gc"] = res["gc"]
        if "node_stats" in res:
            ns = res["node_stats"]
            out["node_stats"] = ns
            if ns.get("batches"):
                out["writes_per_batch"] = round(ns["proposals"] / ns["batches"], 2)
            if ns.get("syncs"):
                out["writes_per_sync"] = round(ns["proposals"] / ns["syncs"], 2)
        sts = await cluster.statuses()
        out["replicas_applied"] = [s_["applied"] for s_ in sts]
        for s_ in sts:
            if s_["addr"] == leader.addr:
                out["leader_transport"] = s_["transport"]
        problems = ("dropped_sends", "reconnects", "bad_frames", "connect_failures")
        out["transport_problems"] = {
            s_["addr"]: {k: s_["transport"][k] for k in problems if s_["transport"].get(k)}
            for s_ in sts
        }
    finally:
        if scraper is not None:
            await scraper.stop()
        await cluster.stop()


class MetricsScraper:
    """Scrapes each node's ``/metrics`` every ``interval`` seconds, as Prometheus
    would (a pessimistic interval: Prometheus defaults to 15 s or more)."""

    def __init__(self, addrs: Sequence[str], interval: float) -> None:
        self.addrs = list(addrs)
        self.interval = interval
        self.count = 0
        self.failures = 0
        self.bytes = 0
        self.ms: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start scraping in the background."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> dict[str, Any]:
        """Stop; the scrape counts and the median scrape time."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        ms = sorted(self.ms)
        return {
            "scrapes": self.count,
            "failures": self.failures,
            "bytes_per_scrape": self.bytes // self.count if self.count else 0,
            "scrape_p50_ms": round(ms[len(ms) // 2], 2) if ms else None,
            "interval_s": self.interval,
        }

    async def _run(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while True:
                for addr in self.addrs:
                    t0 = time.perf_counter()
                    try:
                        async with session.get(f"http://{addr}/metrics") as resp:
                            body = await resp.read()
                            ok = resp.status == 200
                    except aiohttp.ClientError:
                        ok, body = False, b""
                    if ok:
                        self.count += 1
                        self.bytes += len(body)
                        self.ms.append((time.perf_counter() - t0) * 1000)
                    else:
                        self.failures += 1
                await asyncio.sleep(self.interval)


async def run_pysyncobj(
    args: argparse.Namespace, config: str, tmp: str, deadline: float
) -> dict[str, Any]:
    """One PySyncObj run in configuration ``config`` (see `PSO_CONFIGS`); its summary."""
    from pyjraft.bench.pso_server import CONFIGS

    cluster = await Cluster.start_pysyncobj(config, tmp, deadline)
    try:
        leader, st = await cluster.wait_leader(max(1.0, deadline - time.time()))
        spec = {
            "ops": args.ops,
            "duration_s": args.duration,
            "warmup": warmup_ops(args),
            "concurrency": args.concurrency,
            "payload": args.payload,
            "run_timeout": max(1.0, deadline - time.time() - 5.0),
        }
        progress = Progress(f"pysyncobj {config}", args.ops, args.duration)
        leader.on_progress = progress
        res = await leader.request(
            {"cmd": "run", "spec": spec}, "result", max(1.0, deadline - time.time())
        )
        if "error" in res:
            raise RuntimeError(f"pysyncobj {config} workload failed: {res['error']}")
        s = summarize(res["lat_us"], sum(res["errors"].values()), res["elapsed_s"])
        progress.end(f"{s.ok} ok, {s.errors} errors, {s.ops_per_s:,.0f} ops/s")
        d = s.as_dict()
        d["error_reasons"] = res["errors"]
        d["leader_cpu_s"] = round(float(res["cpu_s"]), 3)
        d["leader_cpu_us_per_write"] = round(res["cpu_s"] / s.ok * 1e6, 1) if s.ok else None
        d["version"] = st.get("version")
        d["config"] = config
        d["sync_obj_conf"] = CONFIGS[config]
        return d
    finally:
        await cluster.stop()


async def disk_bandwidth(args: argparse.Namespace, tmp: str, out: dict[str, Any]) -> None:
    """After a durable run: the raw append + fdatasync bandwidth of the data
    directory's disk at the leader's bytes per sync, and pyjraft's share of it."""
    ns = out.get("node_stats") or {}
    syncs, proposals = int(ns.get("syncs", 0)), int(ns.get("proposals", 0))
    ops_per_s = float(out.get("ops_per_s") or 0.0)
    if syncs < 1 or proposals < 1 or args.payload < 1 or ops_per_s <= 0:
        return
    from pyjraft.storage.record import BATCH_HEADER_SIZE, ENTRY_HEADER_SIZE

    wps = proposals / syncs
    batch_bytes = max(1, round(wps * args.payload))
    raw = await asyncio.to_thread(floor.raw_sync_bandwidth, tmp, batch_bytes, args.disk_bw_seconds)
    mb = 1e6
    log_mb_s = ops_per_s * args.payload / mb
    # The leader's log record per sync: one batch header, one entry header per entry.
    framed_mb_s = (
        ops_per_s * (args.payload + ENTRY_HEADER_SIZE) + ops_per_s / wps * BATCH_HEADER_SIZE
    ) / mb
    # The 3 nodes write the same bytes to this one disk at once: what the disk
    # gives each of 3 concurrent writers is the limit of a replica here.
    shared = await asyncio.to_thread(
        floor.raw_sync_bandwidth, tmp, batch_bytes, args.disk_bw_seconds, 3
    )
    raw_mb_s = float(raw["mb_per_s"])
    share_mb_s = float(shared["mb_per_s"]) / 3
    out["raw_sync_batch_bytes"] = batch_bytes
    out["raw_sync_bw_mb_s"] = raw_mb_s
    out["raw_syncs_per_s"] = raw["syncs_per_s"]
    out["leader_log_mb_s"] = round(log_mb_s, 3)
    out["leader_log_mb_s_framed"] = round(framed_mb_s, 3)
    out["leader_syncs_per_s"] = round(ops_per_s / wps, 1)
    if raw_mb_s > 0:
        out["disk_bw_ratio"] = round(log_mb_s / raw_mb_s, 3)
        out["disk_bw_ratio_framed"] = round(framed_mb_s / raw_mb_s, 3)
    out["raw_sync_bw_shared_mb_s"] = round(share_mb_s, 3)
    if share_mb_s > 0:
        out["disk_bw_ratio_shared"] = round(log_mb_s / share_mb_s, 3)
        out["disk_bw_ratio_shared_framed"] = round(framed_mb_s / share_mb_s, 3)
    out["disk_bw"] = {
        "raw": raw,
        "raw_3_writers": shared,
        "batch": "writes_per_sync x payload bytes (payload only, no framing)",
        "framing_bytes": {"per_batch": BATCH_HEADER_SIZE, "per_entry": ENTRY_HEADER_SIZE},
        "note": (
            (
                "all 3 nodes share this disk"
                if out.get("nodes_share_disk")
                else "the nodes' data roots are on different devices"
            )
            + " during the pyjraft run; the raw loop runs alone "
            "(disk_bw_ratio), and as 3 concurrent writers, one file each "
            "(disk_bw_ratio_shared: the leader log against one writer's share)"
        ),
    }
