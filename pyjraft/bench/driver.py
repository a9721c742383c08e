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

The pieces: `pyjraft.bench.children` (node processes, killed by pid on
every exit path), `pyjraft.bench.runs` (one measured run of each
implementation), `pyjraft.bench.idle` (an idle cluster's cost),
`pyjraft.bench.report` (goals and tables); this module parses the command
line and runs what it asks.

Output: a human-readable table on stdout, a progress line on stderr, and as
the LAST line of stdout one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from pyjraft.bench.children import kill_all_children
from pyjraft.bench.idle import run_idle_pyjraft, run_idle_pysyncobj
from pyjraft.bench.report import (
    DURABILITY_NOSYNC,
    DURABILITY_SYNC,
    GOAL_IDLE_CPU_PCT,
    PSO_CONFIGS,
    _compare,
    _goal,
    compute_goals,
    render_idle,
    render_table,
    warmup_ops,
)
from pyjraft.bench.runs import disk_bandwidth, run_pyjraft, run_pysyncobj
from pyjraft.node.loop import run
from pyjraft.node.options import NodeOptions


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "kv":
        from pyjraft.bench.kv import main as kv_main

        return kv_main(argv[1:], prog=f"{prog} kv")
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
