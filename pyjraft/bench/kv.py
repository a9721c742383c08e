"""``python -m pyjraft.bench kv``: the key-value store through its client, side by side with etcd.

::

    python -m pyjraft.bench kv [--concurrency 1,64,256] [--seconds 5] [--repeat 3]
        [--workloads put,get-linearizable,get-lease,get-log] [--payload 100]
        [--compare etcd [--etcd-client aetcd|http]] [--profile WORKLOAD:C]

Each round starts a fresh 3-replica cluster (``pyjraft kv serve``, durable:
the raft log is fdatasynced before a write is acknowledged) on loopback,
writes every key once, then runs each workload at each concurrency
(`pyjraft.bench.kv_workload.closed_loop`) from this process through one
`pyjraft.kv.Client`. With ``--compare etcd`` the same round follows against
a fresh 3-member etcd cluster (`pyjraft.bench.etcd`), with the same closed
loop and concurrency. Rounds alternate between the two, ``--repeat`` times,
so a noisy neighbour hits both; the report gives each figure's median and
range over the rounds, and the ratios of the medians (pyjraft / etcd).

Workloads (pyjraft): ``put``; ``get-linearizable`` (``read="linearizable"``,
ReadIndex by contract), ``get-lease`` (``read="lease"``), ``get-log`` (a
read through the log: a transaction whose only op is a get, applied like a
write), ``get-serializable`` (the leader's local state, may be stale).
What a read mode costs is measured, not assumed: the leader's last log
index is read before and after each measured window, and the report gives
the log entries written per read (``log_entries_per_read``) and names the
path it implies (``via``). While ``pyjraft.kv`` serves linearizable and
lease reads through its temporary log barrier (`pyjraft.kv._read_barrier`),
that number is above zero for them; with ReadIndex it is zero.

etcd has put, a linearizable read (ReadIndex) and a serializable one: each
pyjraft read mode is compared to etcd's linearizable read, and
``get-serializable`` to etcd's serializable read.

``--profile WORKLOAD:C`` (repeatable) records the pyjraft leader and this
client process with py-spy during that phase of the first round and prints
where their CPU went (``--profile-mode cpu``) or, with ``--profile-mode
wall``, where the main thread's wall-clock time went: waiting for input,
blocked in ``fdatasync``, or computing (`pyjraft.bench.pyspy`). The last
line of output is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyjraft.bench.children import forget_child, kill_all_children, track_child
from pyjraft.bench.kv_workload import Operation, closed_loop, preload
from pyjraft.node.loop import run

PYJRAFT_WORKLOADS = ("put", "get-linearizable", "get-lease", "get-log", "get-serializable")
"""What ``--workloads`` may name."""
DEFAULT_WORKLOADS = ("put", "get-linearizable", "get-lease", "get-log")
ETCD_WORKLOAD = {
    "put": "put",
    "get-linearizable": "get-linearizable",
    "get-lease": "get-linearizable",
    "get-log": "get-linearizable",
    "get-serializable": "get-serializable",
}
"""The etcd workload each pyjraft workload is compared with (etcd has no lease
reads and no reads through the log: its linearizable read stands in)."""

PROFILE_GROUPS = {
    "transport (rpc framing, sockets)": ("pyjraft/transport",),
    "client library": ("pyjraft/client", "kv/client.py"),
    "kv service": ("kv/service.py", "kv/protocol.py"),
    "kv state machine (LMDB)": ("kv/machine.py", "kv/store.py"),
    "raft node runtime": ("pyjraft/node/node.py", "pyjraft/node/fsm_caller.py", "node/writer.py"),
    "raft core": ("pyjraft/core",),
    "log storage (fdatasync included)": ("pyjraft/storage",),
    "log fdatasync": ("sync_data",),
    "event loop idle (waiting for input)": ("=Runner.run (",),
}
"""Inclusive-time buckets of a profile, by module path or frame."""


def _median_range(values: list[float], nd: int = 1) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), nd),
        "min": round(min(values), nd),
        "max": round(max(values), nd),
    }


def _via(entries_per_read: float | None, workload: str) -> str:
    if workload == "get-log":
        return "the log (a txn get per read)"
    if workload == "get-serializable":
        return "local state"
    if entries_per_read is None:
        return "?"
    if entries_per_read > 0:
        return f"the log (a barrier entry per {1 / entries_per_read:,.1f} reads)"
    return "no log entry (ReadIndex or lease)"


# -- one round of each implementation ---------------------------------------------------


async def pyjraft_round(
    args: argparse.Namespace, base: Path, round_no: int, results: list[dict[str, Any]]
) -> None:
    """A fresh pyjraft cluster: preload, then every workload at every concurrency."""
    from pyjraft.kv import Client, Op
    from pyjraft.testing.kv_cluster import KvProcessCluster

    node_args = ["--commit-delay-ms", str(args.commit_delay_ms)]
    cluster = KvProcessCluster(
        base / f"pyjraft-{round_no}", node_args=node_args, on_spawn=track_child
    )
    pids: list[int] = []
    try:
        cluster.start_all()
        pids = cluster.pids()
        st = await cluster.wait_leader(timeout=60)
        leader = st["id"]
        leader_pid = cluster.procs[leader].pid
        sys.stderr.write(f"pyjraft round {round_no}: leader {leader} pid {leader_pid}\n")
        value = os.urandom(args.payload)
        async with Client([leader, *cluster.addrs], timeout=10, deadline=60) as kv:
            await preload(lambda k: kv.put(k, value), args.keys)
            ops: dict[str, Operation] = {
                "put": lambda k: kv.put(k, value),
                "get-linearizable": lambda k: kv.get(k, read="linearizable"),
                "get-lease": lambda k: kv.get(k, read="lease"),
                "get-log": lambda k: kv.txn((), (Op.get(k),), ()),
                "get-serializable": lambda k: kv.get(k, read="serializable"),
            }
            for workload in args.workloads:
                for c in args.concurrency:
                    marks: dict[str, int] = {}

                    async def on_window(when: str, marks: dict[str, int] = marks) -> None:
                        s = await cluster.status(leader, timeout=5.0)
                        marks[when] = -1 if s is None else int(s["last_index"])

                    profile = _profile_start(args, round_no, workload, c, leader_pid, base)
                    r = await closed_loop(
                        ops[workload],
                        concurrency=c,
                        seconds=args.seconds,
                        keys=args.keys,
                        seed=args.seed + c,
                        warmup_s=args.warmup,
                        on_window=on_window,
                    )
                    entries = marks.get("end", -1) - marks.get("start", -1)
                    per_read = None
                    if workload != "put" and r["ok"] and min(marks.values()) >= 0:
                        per_read = round(entries / r["ok"], 4)
                    r.update(impl="pyjraft", workload=workload, concurrency=c, round=round_no)
                    r["log_entries_per_read"] = per_read
                    r["via"] = (
                        "the log (an entry per put)"
                        if workload == "put"
                        else _via(per_read, workload)
                    )
                    if profile is not None:
                        r["profile"] = _profile_end(profile)
                    _print_phase(r)
                    results.append(r)
        exited = cluster.exited()
        if exited:
            raise RuntimeError(f"replicas exited: {exited}\n{cluster.log_tails()}")
    finally:
        await cluster.close()
        await asyncio.to_thread(cluster.stop_all)
        for pid in pids:
            forget_child(pid)
        shutil.rmtree(cluster.base, ignore_errors=True)


async def etcd_round(
    args: argparse.Namespace, base: Path, round_no: int, results: list[dict[str, Any]]
) -> None:
    """A fresh etcd cluster: preload, then the etcd workloads at every concurrency."""
    from pyjraft.bench.etcd import EtcdCluster, make_client

    cluster = EtcdCluster(base / f"etcd-{round_no}", args.etcd_binary, on_spawn=track_child)
    pids: list[int] = []
    try:
        cluster.start()
        pids = cluster.pids()
        leader = await cluster.wait_leader(timeout=60)
        url = cluster.client_urls[leader]
        sys.stderr.write(f"etcd round {round_no}: leader {url} pid {pids[leader]}\n")
        value = os.urandom(args.payload)
        client = make_client(args.etcd_client, url, max(args.concurrency))
        try:
            await preload(lambda k: client.put(k, value), args.keys)
            ops: dict[str, Operation] = {
                "put": lambda k: client.put(k, value),
                "get-linearizable": lambda k: client.get(k, serializable=False),
                "get-serializable": lambda k: client.get(k, serializable=True),
            }
            wanted = dict.fromkeys(ETCD_WORKLOAD[w] for w in args.workloads)
            for workload in wanted:
                for c in args.concurrency:
                    r = await closed_loop(
                        ops[workload],
                        concurrency=c,
                        seconds=args.seconds,
                        keys=args.keys,
                        seed=args.seed + c,
                        warmup_s=args.warmup,
                    )
                    r.update(impl="etcd", workload=workload, concurrency=c, round=round_no)
                    r["client"] = client.name
                    _print_phase(r)
                    results.append(r)
        finally:
            await client.close()
    finally:
        await asyncio.to_thread(cluster.stop)
        for pid in pids:
            forget_child(pid)
        shutil.rmtree(cluster.base, ignore_errors=True)


def _print_phase(r: dict[str, Any]) -> None:
    print(
        f"  {r['impl']:<8} round {r['round']}  {r['workload']:<17} c={r['concurrency']:<4}"
        f"{r['ops_per_s']:>10,.0f} ops/s  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
        f"  errors {r['errors']}  client cpu {r['client_cpu_pct']}%"
        + (
            f"  log entries/read {r['log_entries_per_read']}"
            if r.get("log_entries_per_read") is not None
            else ""
        ),
        flush=True,
    )


# -- profiling --------------------------------------------------------------------------


def _profile_start(
    args: argparse.Namespace, round_no: int, workload: str, c: int, leader_pid: int, base: Path
) -> dict[str, Any] | None:
    if round_no != 0 or (workload, c) not in args.profile:
        return None
    from pyjraft.bench.pyspy import Recording, pyspy_binary

    binary = pyspy_binary()
    if binary is None:
        sys.stderr.write("--profile: py-spy is not installed (pip install py-spy)\n")
        return None
    out_dir = Path(args.profile_dir or ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = args.warmup + args.seconds
    tag = f"{workload}-c{c}"
    return {
        "leader": Recording(
            binary, leader_pid, seconds, out_dir / f"leader-{tag}.txt", args.profile_mode
        ),
        "client": Recording(
            binary, os.getpid(), seconds, out_dir / f"client-{tag}.txt", args.profile_mode
        ),
    }


def _profile_end(recordings: dict[str, Any]) -> dict[str, Any]:
    from pyjraft.bench.pyspy import summarize_stacks

    out: dict[str, Any] = {}
    for who, rec in recordings.items():
        if rec.wait():
            wall = rec.mode == "wall"
            out[who] = summarize_stacks(rec.out, groups=PROFILE_GROUPS, main_thread_only=wall)
            out[who]["mode"] = rec.mode
            out[who]["file"] = str(rec.out)
        else:
            out[who] = {"error": f"py-spy wrote nothing (see {rec.out.with_suffix('.log')})"}
    return out


# -- aggregation and report ---------------------------------------------------------------


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per implementation, workload and concurrency: the median and range of
    ops/s, p50 and p99 over the rounds; and pyjraft/etcd ratios of the medians."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        cells.setdefault((r["impl"], r["workload"], r["concurrency"]), []).append(r)
    table: dict[str, Any] = {}
    for (impl, workload, c), rs in cells.items():
        cell: dict[str, Any] = {
            "rounds": len(rs),
            "ops_per_s": _median_range([r["ops_per_s"] for r in rs]),
            "p50_ms": _median_range([r["p50_ms"] for r in rs if r["ok"]] or [float("nan")], 3),
            "p99_ms": _median_range([r["p99_ms"] for r in rs if r["ok"]] or [float("nan")], 3),
            "errors": sum(r["errors"] for r in rs),
            "client_cpu_pct": round(statistics.median(r["client_cpu_pct"] or 0 for r in rs), 1),
        }
        per_read = [
            r["log_entries_per_read"] for r in rs if r.get("log_entries_per_read") is not None
        ]
        if per_read:
            cell["log_entries_per_read"] = statistics.median(per_read)
        if "via" in rs[0]:
            cell["via"] = rs[0]["via"]
        table[f"{impl} {workload} c={c}"] = cell
    ratios: dict[str, Any] = {}
    for key, cell in table.items():
        impl, workload, cc = key.split(" ")
        if impl != "pyjraft":
            continue
        other = table.get(f"etcd {ETCD_WORKLOAD[workload]} {cc}")
        if other and other["ops_per_s"]["median"] > 0:
            ratios[f"{workload} {cc}"] = round(
                cell["ops_per_s"]["median"] / other["ops_per_s"]["median"], 3
            )
    return {"table": table, "ratios": ratios}


def verdict(agg: dict[str, Any], concurrency: Sequence[int]) -> dict[str, Any]:
    """The issue's goal: puts at least etcd's, linearizable reads above etcd's,
    at each concurrency (None where etcd did not run)."""
    out: dict[str, Any] = {}
    for c in concurrency:
        put = agg["ratios"].get(f"put c={c}")
        read = agg["ratios"].get(f"get-linearizable c={c}")
        out[f"c={c}"] = {
            "put_ratio": put,
            "put_goal_met": None if put is None else put >= 1.0,
            "read_ratio": read,
            "read_goal_met": None if read is None else read > 1.0,
        }
    return out


def render(args: argparse.Namespace, out: dict[str, Any]) -> str:
    """The human-readable report."""
    agg = out["aggregate"]
    table = agg["table"]
    lines = [
        f"pyjraft.kv vs {out.get('etcd', {}).get('version', 'etcd (not run)')}: 3 replicas on "
        f"loopback, durable, {args.payload} B values, {args.keys} keys, {args.seconds:g} s per "
        f"phase after {args.warmup:g} s warm-up, {args.repeat} round(s): median [min-max]",
        f"{'workload':<18}{'c':>4}  {'pyjraft ops/s':<24}{'p50/p99 ms':<14}"
        f"{'etcd ops/s':<24}{'p50/p99 ms':<14}{'ratio':>6}  pyjraft read path",
    ]

    def fmt(cell: dict[str, Any] | None) -> tuple[str, str]:
        if cell is None:
            return "-", "-"
        o = cell["ops_per_s"]
        return (
            f"{o['median']:,.0f} [{o['min']:,.0f}-{o['max']:,.0f}]",
            f"{cell['p50_ms']['median']:.2f}/{cell['p99_ms']['median']:.2f}",
        )

    for workload in args.workloads:
        for c in args.concurrency:
            p = table.get(f"pyjraft {workload} c={c}")
            e = table.get(f"etcd {ETCD_WORKLOAD[workload]} c={c}")
            ratio = agg["ratios"].get(f"{workload} c={c}")
            pt, pl = fmt(p)
            et, el = fmt(e)
            etcd_name = "" if workload == ETCD_WORKLOAD[workload] else " *"
            lines.append(
                f"{workload:<18}{c:>4}  {pt:<24}{pl:<14}{et + etcd_name:<24}{el:<14}"
                f"{'-' if ratio is None else f'{ratio:.2f}':>6}  {(p or {}).get('via', '')}"
            )
    if out.get("etcd"):
        lines.append(
            "  * etcd has no lease reads and no reads through the log: its linearizable "
            "read (ReadIndex) stands in"
        )
        lines.append(f"  etcd client: {out['etcd']['client']}")
    for c, v in out.get("goals", {}).items():
        if v["put_ratio"] is None:
            continue
        lines.append(
            f"goal {c}: puts pyjraft/etcd {v['put_ratio']:.2f} (>= 1: "
            f"{'met' if v['put_goal_met'] else 'MISSED'}), linearizable reads "
            f"{v['read_ratio'] if v['read_ratio'] is not None else '-'} (> 1: "
            f"{'met' if v['read_goal_met'] else 'MISSED' if v['read_goal_met'] is False else '-'})"
        )
    for r in out.get("profiles", []):
        lines.append(f"profile of {r['workload']} c={r['concurrency']} (py-spy):")
        for who, prof in r["profile"].items():
            if "error" in prof:
                lines.append(f"  {who}: {prof['error']}")
                continue
            what = "main thread, wall clock" if prof["mode"] == "wall" else "GIL held: CPU"
            lines.append(f"  {who} ({what}, {prof['samples']} samples, {prof['file']}): inclusive")
            for g, pct in sorted(prof["inclusive"].items(), key=lambda x: -x[1]):
                lines.append(f"    {pct:5.1f}%  {g}")
            lines.append("   self:")
            for name, pct in prof["self"][:8]:
                lines.append(f"    {pct:5.1f}%  {name}")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Run the rounds; the JSON result and an exit code."""
    out: dict[str, Any] = {
        "bench": "kv",
        "payload": args.payload,
        "keys": args.keys,
        "seconds": args.seconds,
        "warmup_s": args.warmup,
        "repeat": args.repeat,
        "concurrency": list(args.concurrency),
        "workloads": list(args.workloads),
        "durability": "raft log fdatasynced before every acknowledgement (both)",
        "commit_delay_ms": args.commit_delay_ms,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    if args.compare == "etcd":
        from pyjraft.bench.etcd import etcd_version

        out["etcd"] = {"version": etcd_version(args.etcd_binary), "client": args.etcd_client}
    elif args.etcd_skipped:
        out["etcd_skipped"] = args.etcd_skipped
    base = Path(tempfile.mkdtemp(prefix="pyjraft-kvbench-", dir=args.data_root))
    results: list[dict[str, Any]] = []
    code = 0
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    t0 = time.time()
    try:
        async with asyncio.timeout(args.timeout):
            for r in range(args.repeat):
                await pyjraft_round(args, base, r, results)
                if args.compare == "etcd":
                    await etcd_round(args, base, r, results)
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
        shutil.rmtree(base, ignore_errors=True)
        out["wall_s"] = round(time.time() - t0, 1)
    out["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    out["results"] = [{k: v for k, v in r.items() if k != "profile"} for r in results]
    out["profiles"] = [r for r in results if "profile" in r]
    out["aggregate"] = aggregate(results) if results else {"table": {}, "ratios": {}}
    if args.compare == "etcd" and results:
        out["goals"] = verdict(out["aggregate"], args.concurrency)
    return out, code


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, comma-separated: {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError("each concurrency must be >= 1")
    return vals


def _workloads(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
    bad = [n for n in names if n not in PYJRAFT_WORKLOADS]
    if not names or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(PYJRAFT_WORKLOADS)}, got {text!r}"
        )
    return names


def _profile(text: str) -> tuple[str, int]:
    workload, _, c = text.rpartition(":")
    if workload not in PYJRAFT_WORKLOADS or not c.isdigit():
        raise argparse.ArgumentTypeError(f"expected WORKLOAD:CONCURRENCY, got {text!r}")
    return workload, int(c)


def parse_args(argv: Sequence[str] | None, prog: str) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="pyjraft.kv through its client over TCP (3 durable replicas on loopback), "
        "optionally side by side with a 3-member etcd cluster.",
    )
    ap.add_argument("--concurrency", type=_ints, default=(1, 64, 256), help="default 1,64,256")
    ap.add_argument("--workloads", type=_workloads, default=DEFAULT_WORKLOADS)
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds per phase")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each a fresh cluster)")
    ap.add_argument("--payload", type=int, default=100, help="value bytes")
    ap.add_argument("--keys", type=int, default=10_000, help="key space (written first)")
    ap.add_argument("--seed", type=int, default=1, help="seeds the key choice")
    ap.add_argument(
        "--commit-delay-ms", type=float, default=100.0, help="the replicas' LMDB group commit"
    )
    ap.add_argument("--compare", choices=["etcd"], default=None)
    ap.add_argument(
        "--etcd-client",
        choices=["aetcd", "http"],
        default=None,
        help="aetcd (gRPC, the default when installed) or http (etcd's JSON gateway, aiohttp)",
    )
    ap.add_argument(
        "--profile",
        type=_profile,
        action="append",
        default=[],
        metavar="WORKLOAD:C",
        help="profile this phase of the first round (repeatable)",
    )
    ap.add_argument(
        "--profile-mode",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: samples holding the GIL; wall: every sample of the main thread, idle and "
        "blocking calls included (where a request's time goes at low concurrency)",
    )
    ap.add_argument("--profile-dir", default=None, help="where --profile writes its stacks")
    ap.add_argument("--data-root", default=None, help="parent of the data directories")
    ap.add_argument("--timeout", type=float, default=3600.0, help="bound on the whole run (s)")
    args = ap.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.repeat < 1 or args.keys < 1:
        ap.error("--seconds > 0, --warmup >= 0, --repeat >= 1 and --keys >= 1")
    if args.payload < 0:
        ap.error("--payload must be >= 0")
    args.etcd_skipped = None
    args.etcd_binary = None
    if args.compare == "etcd":
        from pyjraft.bench.etcd import INSTALL_HINT, aetcd_available, etcd_binary

        args.etcd_binary = etcd_binary()
        if args.etcd_binary is None:
            args.etcd_skipped = INSTALL_HINT
            args.compare = None
        if args.etcd_client is None:
            args.etcd_client = "aetcd" if aetcd_available() else "http"
        elif args.etcd_client == "aetcd" and not aetcd_available():
            ap.error("--etcd-client aetcd: pip install 'pyjraft[etcd]' (aetcd)")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "python -m pyjraft.bench kv") -> int:
    """Run the benchmark; print the table, then the JSON line."""
    args = parse_args(argv, prog)
    if args.etcd_skipped:
        print(f"--compare etcd skipped: {args.etcd_skipped}", flush=True)
    try:
        out, code = run(lambda: amain(args))
    finally:
        kill_all_children()
    print(render(args, out))
    if args.etcd_skipped:
        print(f"etcd comparison skipped: {args.etcd_skipped}")
    if "error" in out:
        print(f"ERROR: {out['error']}")
    print(json.dumps(out, sort_keys=True, default=str))
    return code


__all__ = ["aggregate", "amain", "main", "parse_args", "render", "verdict"]
