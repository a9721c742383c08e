"""The benchmark driver: start clusters as child processes, measure, report.

``python -m pyjraft.bench --concurrency C --payload BYTES --ops N [--no-sync]
[--placement leader|client] [--compare [--pysyncobj-configs default,tuned,unbatched]]
[--disk-bw-seconds S] [--timeout S]``

``python -m pyjraft.bench --idle SECONDS [--compare]``: no workload; the CPU
(``/proc/PID/stat`` utime + stime, read at the start and end of the window)
and RSS of an idle 3-node cluster.

With ``--compare``, PySyncObj runs in each chosen configuration (each run
gets an equal share of the time left); ``ratio`` is against the one with the
most writes/s, ``pysyncobj_best_p50_ms`` is the lowest p50 of any. Durable
runs also measure the disk's raw append + fdatasync bandwidth at the leader's
bytes per sync (`floor.raw_sync_bandwidth`) and report ``disk_bw_ratio``.
``goals`` judges the issue's targets this run can judge, with the numbers.

Children speak JSON lines (commands on stdin, replies on stdout, their
stderr goes to a log file in the run's temp directory). Every child is
recorded by pid when it starts and killed by pid on every exit path (normal
end, error, ``--timeout``, SIGTERM, Ctrl-C); the children also kill
themselves when the driver dies (``PR_SET_PDEATHSIG`` plus a watchdog) or
when the deadline passes.

Output: a human-readable table on stdout, a progress line on stderr, and as
the LAST line of stdout one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyjraft.bench import floor
from pyjraft.bench._proc import set_pdeathsig
from pyjraft.bench.stats import percentile, summarize
from pyjraft.node.loop import run
from pyjraft.node.options import NodeOptions
from pyjraft.testing.ports import free_ports

ELECTION_TIMEOUT_MS = 1000
"""The nodes' election timeout with ``--leader-node`` (the `NodeOptions` default)."""
DURABILITY_SYNC = "durable: leader and a majority fdatasync each entry before the ack"
DURABILITY_NOSYNC = (
    "--no-sync: written, never fsynced (UNSAFE: a majority power loss loses acked writes)"
)
DURABILITY_PSO = "in-memory journal: nothing is ever written to disk"

_LIVE: set[int] = set()
"""Pids of every child started and not yet reaped."""


def _kill_pid(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def kill_all_children() -> None:
    """SIGKILL every child still alive, by pid (the last-resort exit path)."""
    for pid in list(_LIVE):
        _kill_pid(pid)
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)
        _LIVE.discard(pid)


class Child:
    """One node process and its JSON-lines conversation."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process, log_path: str) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.log_path = log_path
        self.addr = ""
        self.on_progress: Callable[[int], None] | None = None
        self._lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def spawn(cls, name: str, argv: Sequence[str], log_path: str) -> Child:
        """Start ``python argv...`` with pipes; record its pid."""
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        with open(log_path, "wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                preexec_fn=set_pdeathsig,
                limit=1 << 28,
            )
        _LIVE.add(proc.pid)
        return cls(name, proc, log_path)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                try:
                    obj = json.loads(line)
                except ValueError:
                    continue
                if obj.get("type") == "progress":
                    if self.on_progress is not None:
                        self.on_progress(int(obj["done"]))
                    continue
                self._lines.put_nowait(obj)
        finally:
            self._lines.put_nowait(None)

    def send(self, cmd: dict[str, Any]) -> None:
        """Write one command line (ignored if the child is gone)."""
        stdin = self.proc.stdin
        if stdin is None or stdin.is_closing():
            return
        with contextlib.suppress(OSError, RuntimeError):
            stdin.write((json.dumps(cmd) + "\n").encode())

    async def expect(self, want: str, timeout: float) -> dict[str, Any]:
        """The next reply of type ``want`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                obj = await self._lines.get()
                if obj is None:
                    self._lines.put_nowait(None)
                    raise RuntimeError(
                        f"{self.name} exited (rc={self.proc.returncode}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                if obj.get("type") == want:
                    return obj

    async def request(self, cmd: dict[str, Any], want: str, timeout: float) -> dict[str, Any]:
        """Send ``cmd`` and wait for a reply of type ``want``."""
        self.send(cmd)
        return await self.expect(want, timeout)

    def log_tail(self, n: int = 2000) -> str:
        """The last ``n`` characters of the child's stderr."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    async def stop(self, grace: float = 3.0) -> None:
        """Ask the child to exit; SIGKILL it by pid if it has not within ``grace``."""
        if self.proc.returncode is None:
            self.send({"cmd": "exit"})
            with contextlib.suppress(OSError, RuntimeError):
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                _kill_pid(self.pid)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), 5.0)
        _LIVE.discard(self.pid)
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class Cluster:
    """Three node processes of one implementation."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    @classmethod
    async def start_pyjraft(cls, args: argparse.Namespace, tmp: str, deadline: float) -> Cluster:
        """Start three `pyjraft.bench.server` processes; node ``i`` keeps its data
        under ``args.node_parents[i]`` (``tmp`` for all unless
        ``--node-data-roots``), its log file in ``tmp``."""
        ports = free_ports(3)
        peers = ",".join(f"127.0.0.1:{p}" for p in ports)
        args.http_addrs = [f"127.0.0.1:{p}" for p in free_ports(3)] if args.metrics else []
        specs = []
        tls_dir = _make_tls(args, tmp, peers.split(","))
        for i, port in enumerate(ports):
            data = os.path.join(args.node_parents[i], f"node{i}")
            argv = ["-m", "pyjraft.bench.server", "--port", str(port), "--peers", peers]
            if tls_dir:
                argv += ["--tls-dir", tls_dir]
            argv += ["--data-dir", data, "--deadline", str(deadline), "--loop", args.loop]
            if args.leader_node is not None:
                # The others wait 5 times longer before standing: node K leads.
                timeout = ELECTION_TIMEOUT_MS * (1 if i == args.leader_node else 5)
                argv.append(f"--election-timeout-ms={timeout}")
            if args.no_sync:
                argv.append("--no-sync")
            argv.append(f"--leader-write-thread={args.leader_write_thread}")
            if args.busy_poll_us is not None:
                argv.append(f"--busy-poll-us={args.busy_poll_us}")
            if args.snapshot_every is not None:
                argv.append(f"--snapshot-every={args.snapshot_every}")
            if not args.tune_gc:
                argv.append("--no-tune-gc")
            if args.metrics:
                argv += ["--metrics", "--http", args.http_addrs[i]]
            specs.append((f"pyjraft node{i}", argv, os.path.join(tmp, f"node{i}.log")))
        return await cls._spawn(specs)

    @classmethod
    async def start_pysyncobj(cls, config: str, tmp: str, deadline: float) -> Cluster:
        """Start three `pyjraft.bench.pso_server` processes in configuration ``config``."""
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        specs = []
        for i, a in enumerate(addrs):
            argv = ["-m", "pyjraft.bench.pso_server", "--self", a]
            argv += ["--partners", ",".join(x for x in addrs if x != a)]
            argv += ["--deadline", str(deadline), "--config", config]
            log_path = os.path.join(tmp, f"pso-{config}-{i}.log")
            specs.append((f"pysyncobj-{config} node{i}", argv, log_path))
        return await cls._spawn(specs)

    @classmethod
    async def _spawn(cls, specs: list[tuple[str, list[str], str]]) -> Cluster:
        """Start one child per (name, argv, log path); wait until each says ``ready``.
        On any failure, every child started so far is stopped."""
        children: list[Child] = []
        cluster = cls(children)
        try:
            for name, argv, log_path in specs:
                children.append(await Child.spawn(name, argv, log_path))
            for c in children:
                c.addr = (await c.expect("ready", 30.0))["addr"]
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    async def statuses(self) -> list[dict[str, Any]]:
        """One ``status`` reply from each member."""
        return list(
            await asyncio.gather(
                *(c.request({"cmd": "status"}, "status", 10.0) for c in self.children)
            )
        )

    async def wait_leader(self, timeout: float) -> tuple[Child, dict[str, Any]]:
        """Wait until every member names the same leader and it has applied its
        own no-op (pyjraft) or everyone is ready (PySyncObj)."""
        async with asyncio.timeout(timeout):
            while True:
                sts = await self.statuses()
                leaders = [c for c, s in zip(self.children, sts, strict=True) if s["is_leader"]]
                if len(leaders) == 1:
                    lc = leaders[0]
                    ls = sts[self.children.index(lc)]
                    agreed = all(s["leader"] == lc.addr for s in sts)
                    caught_up = ls.get("ready", True) and all(s.get("ready", True) for s in sts)
                    if "applied_index" in ls:
                        caught_up = caught_up and 1 <= ls["commit_index"] <= ls["applied_index"]
                    if agreed and caught_up:
                        return lc, ls
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop every member (kill by pid after a grace period)."""
        await asyncio.gather(*(c.stop() for c in self.children), return_exceptions=True)


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


def warmup_ops(args: argparse.Namespace) -> int:
    """Unmeasured writes before the measured ones."""
    if args.warmup is not None:
        return int(args.warmup)
    return int(min(2000, max(args.ops // 10, 2 * args.concurrency)))


_client_tls: list[Any] = [None]  # the bench client's TlsConfig with --tls (set by _make_tls)


def _make_tls(args: argparse.Namespace, tmp: str, addrs: list[str]) -> str:
    """With ``--tls``: certificates for the nodes and the bench client, in ``tmp``."""
    if not getattr(args, "tls", False):
        _client_tls[0] = None
        return ""
    from pathlib import Path

    from pyjraft.certs import make_cluster_certs
    from pyjraft.transport.tls import TlsConfig

    files = make_cluster_certs(Path(tmp) / "tls", addrs, ["bench"])
    client = files["client:bench"]
    _client_tls[0] = TlsConfig.load(client.cert, client.key, files["ca"].cert)
    return str(Path(tmp) / "tls")


async def client_workload(
    addr: str, spec: dict[str, Any], progress: Progress | None
) -> dict[str, Any]:
    """The ``--placement client`` load: ``concurrency`` callers in this process,
    each ``await RpcClient.call(leader, "bench.apply", payload)`` in a loop."""
    from pyjraft.transport.tcp import RpcClient

    payload = os.urandom(int(spec["payload"]))
    conc = max(1, int(spec["concurrency"]))
    rpc = RpcClient(tls=_client_tls[0])

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
    rpc = RpcClient(tls=_client_tls[0])
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


async def _await_leader(
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
        leader, _ = await _await_leader(cluster, deadline, out)
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
        leader, ls = await _await_leader(cluster, deadline, out)
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


def _budget(deadline: float, runs_left: int) -> float:
    """The deadline of the next of ``runs_left`` runs: an equal share of the time
    left, so a slow configuration can not starve the ones after it."""
    now = time.time()
    return now + max(0.0, deadline - now) / max(1, runs_left)


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Run everything the arguments ask for; the JSON result and an exit code."""
    t_start = time.time()
    deadline = t_start + args.timeout
    tmp = tempfile.mkdtemp(prefix="pyjraft-bench-", dir=args.data_root)
    roots = args.node_data_roots
    args.node_parents = (
        [tempfile.mkdtemp(prefix=f"pyjraft-bench-node{i}-", dir=r) for i, r in enumerate(roots)]
        if roots
        else [tmp] * 3
    )
    out: dict[str, Any] = {
        "impl": "pyjraft",
        "mode": "idle" if args.idle is not None else "load",
    }
    if args.idle is None:
        out.update(
            {
                "placement": args.placement,
                "tls": args.tls,
                "concurrency": args.concurrency,
                "payload": args.payload,
                "ops": None if args.duration is not None else args.ops,
                "duration_s": args.duration,
                "warmup": warmup_ops(args),
            }
        )
    out.update(
        {
            "sync": not args.no_sync,
            "leader_write_thread": args.leader_write_thread,
            "node_data_roots": list(roots) if roots else None,
            "nodes_share_disk": len({os.stat(p).st_dev for p in args.node_parents}) == 1,
            "leader_node_preferred": args.leader_node,
            "metrics": args.metrics,
            "busy_poll_us": (
                NodeOptions(id="x", peers=("x",)).busy_poll_us
                if args.busy_poll_us is None
                else args.busy_poll_us
            ),
            "durability": DURABILITY_NOSYNC if args.no_sync else DURABILITY_SYNC,
            "loop": args.loop,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        }
    )
    if args.compare:
        out["pysyncobj_configs"] = list(args.pysyncobj_configs)
    code = 0
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with asyncio.timeout(args.timeout):
            if args.idle is not None:
                code = await _idle(args, tmp, deadline, out)
            else:
                code = await _load(args, tmp, deadline, out)
    except TimeoutError:
        out["error"] = f"--timeout {args.timeout} s reached"
        code = 3
    except asyncio.CancelledError:
        out["error"] = "cancelled (signal)"
        code = 3
    except Exception as e:
        out["error"] = repr(e)
        code = 2
    finally:
        kill_all_children()
        for parent in {tmp, *args.node_parents}:
            shutil.rmtree(parent, ignore_errors=True)
        out["wall_s"] = round(time.time() - t_start, 3)
    return out, code


async def _load(args: argparse.Namespace, tmp: str, deadline: float, out: dict[str, Any]) -> int:
    code = 0
    await run_pyjraft(args, tmp, deadline, out)
    if not args.no_sync and args.disk_bw_seconds > 0:
        # The disk under test is the leader's.
        await disk_bandwidth(args, args.node_parents[out.get("leader_node", 0)], out)
    if args.compare:
        configs = list(args.pysyncobj_configs)
        for i, config in enumerate(configs):
            run_deadline = _budget(deadline, len(configs) - i)
            try:
                out[f"pysyncobj_{config}"] = await run_pysyncobj(args, config, tmp, run_deadline)
            except (RuntimeError, OSError, TimeoutError) as e:
                out[f"pysyncobj_{config}"] = {"error": str(e) or type(e).__name__}
                code = 2
        _compare(out)
    out["goals"] = compute_goals(args, out)
    return code


async def _idle(args: argparse.Namespace, tmp: str, deadline: float, out: dict[str, Any]) -> int:
    code = 0
    runs = 1 + (len(args.pysyncobj_configs) if args.compare else 0)
    await run_idle_pyjraft(args, tmp, _budget(deadline, runs), out)
    if args.compare:
        for i, config in enumerate(args.pysyncobj_configs):
            run_deadline = _budget(deadline, runs - 1 - i)
            try:
                out[f"pysyncobj_{config}_idle"] = await run_idle_pysyncobj(
                    config, args.idle, tmp, run_deadline
                )
            except (RuntimeError, OSError, TimeoutError) as e:
                out[f"pysyncobj_{config}_idle"] = {"error": str(e) or type(e).__name__}
                code = 2
    out["goals"] = {
        "idle_cpu_pct_of_core": _goal(
            out["idle_cpu_pct_of_core"],
            "<=",
            GOAL_IDLE_CPU_PCT,
            True,
            idle_s=out["idle_s"],
            per_node=out["idle_cpu_pct_per_node"],
        )
    }
    return code


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


def _configs(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [n for n in names if n not in PSO_CONFIGS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PSO_CONFIGS)}, got {text!r}"
        )
    return names


def parse_args(
    argv: Sequence[str] | None = None, prog: str = "python -m pyjraft.bench"
) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Committed writes/s and latency of a 3-process pyjraft cluster on loopback.",
    )
    ap.add_argument("--concurrency", type=int, default=16, help="writes in flight (closed loop)")
    ap.add_argument("--payload", type=int, default=100, help="bytes per write")
    ap.add_argument("--ops", type=int, default=10000, help="measured writes")
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="measure for this long instead of --ops writes: no write starts after it, "
        "those in flight finish and count (each PySyncObj run gets the same)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured writes first")
    ap.add_argument(
        "--no-sync", action="store_true", help="NodeOptions(sync=False): UNSAFE, no fdatasync"
    )
    ap.add_argument(
        "--leader-write-thread",
        choices=["on", "off", "default"],
        default="default",
        help="NodeOptions.leader_write_thread (default: the library's default)",
    )
    ap.add_argument(
        "--busy-poll-us",
        type=int,
        default=None,
        metavar="US",
        help="NodeOptions.busy_poll_us: a leader polls this long after sending entries "
        "(default: the library's default, off)",
    )
    ap.add_argument(
        "--snapshot-every",
        type=int,
        default=None,
        metavar="N",
        help="NodeOptions.snapshot_every_entries of the nodes, 0: no snapshots (default: the "
        "library's default; the benchmark's state machine saves a small file)",
    )
    ap.add_argument(
        "--no-tune-gc",
        dest="tune_gc",
        action="store_false",
        help="leave the nodes' GC at Python's defaults (default: pyjraft.node.tune_gc)",
    )
    ap.add_argument("--placement", choices=["leader", "client"], default="leader")
    ap.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between the nodes and from the client (certificates made for the run)",
    )
    ap.add_argument(
        "--api",
        choices=["apply", "submit"],
        default="apply",
        help="leader placement: one coroutine per caller awaiting node.apply (default), or "
        "node.submit with a completion callback (JRaft's Task and Closure; the way "
        "PySyncObj is driven, with callback=)",
    )
    ap.add_argument("--compare", action="store_true", help="also run PySyncObj 0.3.17")
    ap.add_argument(
        "--pysyncobj-configs",
        type=_configs,
        default=None,
        metavar="LIST",
        help="PySyncObj configurations --compare runs, from default,tuned,unbatched "
        "(default: all three; with --idle: tuned)",
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="no workload: measure the CPU and RSS of an idle 3-node cluster over SECONDS",
    )
    ap.add_argument(
        "--disk-bw-seconds",
        type=float,
        default=1.5,
        help="durable runs: length of the raw append+fdatasync bandwidth loop (0: skip it)",
    )
    ap.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (s)")
    ap.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop",
        help="event loop of the pyjraft nodes (uvloop is a pyjraft dependency)",
    )
    ap.add_argument("--profile", default=None, help="cProfile the leader's measured run to FILE")
    ap.add_argument("--data-root", default=None, help="parent of the temp data dirs")
    ap.add_argument(
        "--node-data-roots",
        default=None,
        metavar="R0,R1,R2",
        help="a parent directory per node (say, one per disk) instead of --data-root; the "
        "floor and the raw disk bandwidth are measured in the leader's",
    )
    ap.add_argument(
        "--leader-node",
        type=int,
        default=None,
        choices=[0, 1, 2],
        help="let node K lead: the others wait 5 times longer before an election",
    )
    ap.add_argument(
        "--metrics",
        action="store_true",
        help="NodeOptions.metrics on every node, each serving pyjraft.ops /metrics on a "
        "loopback port that this process scrapes every --metrics-scrape-s during the run",
    )
    ap.add_argument(
        "--metrics-scrape-s",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="scrape interval with --metrics (default 1)",
    )
    args = ap.parse_args(argv)
    if args.metrics_scrape_s <= 0:
        ap.error("--metrics-scrape-s must be > 0")
    if args.concurrency < 1 or args.ops < 1 or args.payload < 0 or args.timeout <= 0:
        ap.error("--concurrency and --ops must be >= 1, --payload >= 0, --timeout > 0")
    if args.duration is not None and not 0 < args.duration < args.timeout:
        ap.error("--duration must be > 0 and below --timeout")
    if args.duration is not None and args.idle is not None:
        ap.error("--duration measures a workload; --idle takes its own seconds")
    if args.idle is not None and args.idle <= 0:
        ap.error("--idle must be > 0 seconds")
    if args.disk_bw_seconds < 0:
        ap.error("--disk-bw-seconds must be >= 0")
    if args.busy_poll_us is not None and args.busy_poll_us < 0:
        ap.error("--busy-poll-us must be >= 0")
    if args.node_data_roots is not None:
        roots = tuple(r.strip() for r in args.node_data_roots.split(","))
        if len(roots) != 3 or not all(roots):
            ap.error("--node-data-roots takes 3 directories, comma-separated")
        missing = [r for r in roots if not os.path.isdir(r)]
        if missing:
            ap.error(f"--node-data-roots: not a directory: {', '.join(missing)}")
        args.node_data_roots = roots
    if args.pysyncobj_configs is not None and not args.compare:
        ap.error("--pysyncobj-configs needs --compare")
    if args.pysyncobj_configs is None:
        args.pysyncobj_configs = ("tuned",) if args.idle is not None else PSO_CONFIGS
    if args.compare:
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            ap.error("--compare needs pysyncobj==0.3.17 (pip install 'pyjraft[bench]')")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "python -m pyjraft.bench") -> int:
    """Run the benchmark; print the table, then the JSON line. The exit code is
    0 on success, 2 on a failed run, 3 on timeout or signal."""
    args = parse_args(argv, prog)
    try:
        # The library's loop (uvloop when installed), as a user's client would run:
        # --placement client measures this process's RpcClient.
        out, code = run(lambda: amain(args))
    finally:
        kill_all_children()
    print(render_idle(out) if args.idle is not None else render_table(args, out))
    if "error" in out:
        print(f"ERROR: {out['error']}")
    print(json.dumps(out, sort_keys=True, default=str))
    return code
