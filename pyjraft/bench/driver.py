"""The benchmark driver: start clusters as child processes, measure, report.

``python -m pyjraft.bench --concurrency C --payload BYTES --ops N [--no-sync]
[--placement leader|client] [--compare] [--timeout S]``

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
from pyjraft.testing.ports import free_ports

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
        """Start three `pyjraft.bench.server` processes, data dirs under ``tmp``."""
        ports = free_ports(3)
        peers = ",".join(f"127.0.0.1:{p}" for p in ports)
        children: list[Child] = []
        cluster = cls(children)
        try:
            for i, port in enumerate(ports):
                data = os.path.join(tmp, f"node{i}")
                argv = ["-m", "pyjraft.bench.server", "--port", str(port), "--peers", peers]
                argv += ["--data-dir", data, "--deadline", str(deadline), "--loop", args.loop]
                if args.no_sync:
                    argv.append("--no-sync")
                if not args.tune_gc:
                    argv.append("--no-tune-gc")
                log_path = os.path.join(tmp, f"node{i}.log")
                children.append(await Child.spawn(f"pyjraft node{i}", argv, log_path))
            for c in children:
                c.addr = (await c.expect("ready", 30.0))["addr"]
        except BaseException:
            await cluster.stop()
            raise
        return cluster

    @classmethod
    async def start_pysyncobj(cls, tuned: bool, tmp: str, deadline: float) -> Cluster:
        """Start three `pyjraft.bench.pso_server` processes."""
        addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
        children: list[Child] = []
        cluster = cls(children)
        tag = "tuned" if tuned else "default"
        try:
            for i, a in enumerate(addrs):
                argv = ["-m", "pyjraft.bench.pso_server", "--self", a]
                argv += ["--partners", ",".join(x for x in addrs if x != a)]
                argv += ["--deadline", str(deadline)]
                if tuned:
                    argv.append("--tuned")
                log_path = os.path.join(tmp, f"pso-{tag}-{i}.log")
                children.append(await Child.spawn(f"pysyncobj-{tag} node{i}", argv, log_path))
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

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.t0 = time.perf_counter()

    def __call__(self, done: int) -> None:
        """Show ``done`` of ``total``."""
        dt = time.perf_counter() - self.t0
        rate = done / dt if dt > 0 else 0.0
        sys.stderr.write(f"\r[{self.label}] {done}/{self.total} ops  {rate:,.0f} ops/s   ")
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


async def client_workload(
    addr: str, spec: dict[str, Any], progress: Progress | None
) -> dict[str, Any]:
    """The ``--placement client`` load: ``concurrency`` callers in this process,
    each ``await RpcClient.call(leader, "bench.apply", payload)`` in a loop."""
    from pyjraft.transport.tcp import RpcClient

    payload = os.urandom(int(spec["payload"]))
    conc = max(1, int(spec["concurrency"]))
    rpc = RpcClient()

    async def phase(n: int, lat: list[int], errors: dict[str, int]) -> float:
        todo = iter(range(n))
        clock = time.perf_counter_ns

        async def worker() -> None:
            for _ in todo:
                t0 = clock()
                try:
                    await rpc.call(addr, "bench.apply", payload, timeout=30.0)
                except Exception as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                lat.append((clock() - t0) // 1000)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(min(conc, n))))
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
            elapsed = await phase(int(spec["ops"]), lat, errors)
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
    port = int((await leader.request({"cmd": "echo"}, "echo", 10.0))["port"])
    rtt_us = await asyncio.to_thread(floor.tcp_rtt_us, port)
    rpc = RpcClient()
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
    return {
        "fdatasync_p10_ms": round(percentile(sorted(sync_us), 10) / 1000.0, 4),
        "fdatasync_p50_ms": round(f, 4),
        "fdatasync_p99_ms": round(p99_ms(sync_us), 4),
        "tcp_rtt_p50_ms": round(r, 4),
        "tcp_rtt_p99_ms": round(p99_ms(rtt_us), 4),
        "rpc_rtt_p50_ms": round(p50_ms(rpc_us), 4),
        "floor_ms": round(f + r, 4),
    }


async def run_pyjraft(
    args: argparse.Namespace, tmp: str, deadline: float, out: dict[str, Any]
) -> None:
    """Start the pyjraft cluster, measure the floor, run the workload; fill ``out``."""
    cluster = await Cluster.start_pyjraft(args, tmp, deadline)
    try:
        out["node_pids"] = [c.pid for c in cluster.children]
        t0 = time.time()
        leader, _ = await cluster.wait_leader(max(1.0, deadline - time.time()))
        out["leader_wait_s"] = round(time.time() - t0, 3)
        out["leader_pid"] = leader.pid
        sys.stderr.write(f"pyjraft leader {leader.addr} pid {leader.pid}\n")
        fl = await measure_floor(tmp, leader)
        out["floor"] = fl
        out["floor_ms"] = fl["floor_ms"]
        label = f"pyjraft {'no-sync' if args.no_sync else 'durable'} {args.placement}"
        spec: dict[str, Any] = {
            "ops": args.ops,
            "warmup": warmup_ops(args),
            "concurrency": args.concurrency,
            "payload": args.payload,
            "profile": os.path.abspath(args.profile) if args.profile else None,
        }
        progress = Progress(label, args.ops)
        leader.on_progress = progress
        cpu0 = (await leader.request({"cmd": "status"}, "status", 10.0))["cpu_s"]
        left = max(1.0, deadline - time.time())
        if args.placement == "leader":
            res = await leader.request({"cmd": "run", "spec": spec}, "result", left)
        else:
            res = await asyncio.wait_for(client_workload(leader.addr, spec, progress), left)
        cpu1 = (await leader.request({"cmd": "status"}, "status", 10.0))["cpu_s"]
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
        await cluster.stop()


async def run_pysyncobj(
    args: argparse.Namespace, tuned: bool, tmp: str, deadline: float
) -> dict[str, Any]:
    """One PySyncObj run (defaults or tuned); its summary."""
    tag = "tuned" if tuned else "default"
    cluster = await Cluster.start_pysyncobj(tuned, tmp, deadline)
    try:
        leader, st = await cluster.wait_leader(max(1.0, deadline - time.time()))
        spec = {
            "ops": args.ops,
            "warmup": warmup_ops(args),
            "concurrency": args.concurrency,
            "payload": args.payload,
            "run_timeout": max(1.0, deadline - time.time() - 5.0),
        }
        progress = Progress(f"pysyncobj {tag}", args.ops)
        leader.on_progress = progress
        res = await leader.request(
            {"cmd": "run", "spec": spec}, "result", max(1.0, deadline - time.time())
        )
        if "error" in res:
            raise RuntimeError(f"pysyncobj {tag} workload failed: {res['error']}")
        s = summarize(res["lat_us"], sum(res["errors"].values()), res["elapsed_s"])
        progress.end(f"{s.ok} ok, {s.errors} errors, {s.ops_per_s:,.0f} ops/s")
        d = s.as_dict()
        d["error_reasons"] = res["errors"]
        d["leader_cpu_s"] = round(float(res["cpu_s"]), 3)
        d["leader_cpu_us_per_write"] = round(res["cpu_s"] / s.ok * 1e6, 1) if s.ok else None
        d["version"] = st.get("version")
        return d
    finally:
        await cluster.stop()


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}"
    return str(v)


def render_table(args: argparse.Namespace, out: dict[str, Any]) -> str:
    """The human-readable report."""
    rows: list[tuple[str, dict[str, Any], str]] = [
        (
            f"pyjraft ({'no-sync' if args.no_sync else 'durable'}, {args.placement})",
            out,
            DURABILITY_NOSYNC if args.no_sync else DURABILITY_SYNC,
        )
    ]
    for tag in ("default", "tuned"):
        d = out.get(f"pysyncobj_{tag}")
        if isinstance(d, dict):
            name = "PySyncObj 0.3.17 defaults" if tag == "default" else "PySyncObj tuned 5 ms"
            rows.append((name, d, DURABILITY_PSO))
    lines = [
        f"3 processes on loopback, payload {args.payload} B, concurrency {args.concurrency}, "
        f"{args.ops} measured writes (+{warmup_ops(args)} warmup), loop {args.loop}",
        f"{'implementation':<34}{'writes/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}"
        f"{'cpu us/w':>10}  durability",
    ]
    for name, d, dur in rows:
        lines.append(
            f"{name:<34}{_fmt(d.get('ops_per_s'), 0):>11}{_fmt(d.get('p50_ms')):>9}"
            f"{_fmt(d.get('p99_ms')):>9}{_fmt(d.get('p999_ms')):>10}"
            f"{_fmt(d.get('leader_cpu_us_per_write'), 0):>10}  {dur}"
        )
    if "ratio" in out:
        lines.append(
            f"ratio pyjraft / better PySyncObj ({out['pysyncobj_best']}): {out['ratio']:.2f}x"
        )
    fl = out.get("floor")
    if isinstance(fl, dict):
        lines.append(
            f"durable latency floor at concurrency 1: fdatasync {fl['fdatasync_p50_ms']:.3f} ms"
            f" + loopback TCP RTT {fl['tcp_rtt_p50_ms']:.3f} ms = {fl['floor_ms']:.3f} ms"
            f" (pyjraft RPC round trip {fl['rpc_rtt_p50_ms']:.3f} ms)"
        )
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Run everything the arguments ask for; the JSON result and an exit code."""
    t_start = time.time()
    deadline = t_start + args.timeout
    tmp = tempfile.mkdtemp(prefix="pyjraft-bench-", dir=args.data_root)
    out: dict[str, Any] = {
        "impl": "pyjraft",
        "placement": args.placement,
        "concurrency": args.concurrency,
        "payload": args.payload,
        "ops": args.ops,
        "warmup": warmup_ops(args),
        "sync": not args.no_sync,
        "durability": DURABILITY_NOSYNC if args.no_sync else DURABILITY_SYNC,
        "loop": args.loop,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    code = 0
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main_task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        async with asyncio.timeout(args.timeout):
            await run_pyjraft(args, tmp, deadline, out)
            if args.compare:
                for tuned in (False, True):
                    tag = "tuned" if tuned else "default"
                    try:
                        out[f"pysyncobj_{tag}"] = await run_pysyncobj(args, tuned, tmp, deadline)
                    except (RuntimeError, OSError) as e:
                        out[f"pysyncobj_{tag}"] = {"error": str(e)}
                        code = 2
                _compare(out)
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
        shutil.rmtree(tmp, ignore_errors=True)
        out["wall_s"] = round(time.time() - t_start, 3)
    return out, code


def _compare(out: dict[str, Any]) -> None:
    d = out.get("pysyncobj_default", {})
    t = out.get("pysyncobj_tuned", {})
    dv = d.get("ops_per_s")
    tv = t.get("ops_per_s")
    out["pysyncobj_default_ops_per_s"] = dv
    out["pysyncobj_tuned_ops_per_s"] = tv
    candidates = [(v, k) for v, k in ((dv, "default"), (tv, "tuned")) if v]
    if not candidates:
        return
    best_v, best = max(candidates)
    b = out[f"pysyncobj_{best}"]
    out["pysyncobj_best"] = best
    out["pysyncobj_ops_per_s"] = best_v
    out["pysyncobj_p50_ms"] = b.get("p50_ms")
    out["pysyncobj_p99_ms"] = b.get("p99_ms")
    out["pysyncobj_p999_ms"] = b.get("p999_ms")
    out["pysyncobj_durability"] = DURABILITY_PSO
    if out.get("ops_per_s"):
        out["ratio"] = round(out["ops_per_s"] / best_v, 3)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m pyjraft.bench",
        description="Committed writes/s and latency of a 3-process pyjraft cluster on loopback.",
    )
    ap.add_argument("--concurrency", type=int, default=16, help="writes in flight (closed loop)")
    ap.add_argument("--payload", type=int, default=100, help="bytes per write")
    ap.add_argument("--ops", type=int, default=10000, help="measured writes")
    ap.add_argument("--warmup", type=int, default=None, help="unmeasured writes first")
    ap.add_argument(
        "--no-sync", action="store_true", help="NodeOptions(sync=False): UNSAFE, no fdatasync"
    )
    ap.add_argument(
        "--no-tune-gc",
        dest="tune_gc",
        action="store_false",
        help="leave the nodes' GC at Python's defaults (default: pyjraft.node.tune_gc)",
    )
    ap.add_argument("--placement", choices=["leader", "client"], default="leader")
    ap.add_argument("--compare", action="store_true", help="also run PySyncObj 0.3.17")
    ap.add_argument("--timeout", type=float, default=600.0, help="bound on the whole run (s)")
    ap.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="uvloop",
        help="event loop of the pyjraft nodes (uvloop is a pyjraft dependency)",
    )
    ap.add_argument("--profile", default=None, help="cProfile the leader's measured run to FILE")
    ap.add_argument("--data-root", default=None, help="parent of the temp data dirs")
    args = ap.parse_args(argv)
    if args.concurrency < 1 or args.ops < 1 or args.payload < 0 or args.timeout <= 0:
        ap.error("--concurrency and --ops must be >= 1, --payload >= 0, --timeout > 0")
    if args.compare:
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            ap.error("--compare needs pysyncobj==0.3.17 (pip install 'pyjraft[bench]')")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table, then the JSON line. The exit code is
    0 on success, 2 on a failed run, 3 on timeout or signal."""
    args = parse_args(argv)
    try:
        out, code = asyncio.run(amain(args))
    finally:
        kill_all_children()
    print(render_table(args, out))
    if "error" in out:
        print(f"ERROR: {out['error']}")
    print(json.dumps(out, sort_keys=True, default=str))
    return code
