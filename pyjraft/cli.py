"""The ``pyjraft`` command.

``pyjraft demo`` runs a local 3-replica key-value cluster under a mixed
load through a leader crash and checks that no acknowledged write was lost
(`pyjraft.demo.kv_demo`; ``--quick`` for the short version, ``--counter``
for the earlier counter walk-through, ``--tls`` over mutual TLS);
``pyjraft counter ...`` is ``python -m pyjraft.examples.counter`` (``server``
and ``client``); ``pyjraft certs ...`` makes a CA and node/client
certificates (`pyjraft.certs`); ``pyjraft bench ...`` is ``python -m
pyjraft.bench``; ``pyjraft status --peers A,B,C`` prints a table of a cluster;
``pyjraft kv ...`` runs and talks to the replicated key-value store
(`pyjraft.kv.cli`); ``pyjraft admin ...`` changes a group's membership,
moves its leader and triggers snapshots (`pyjraft.client.admin_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence

from pyjraft.examples import counter


async def _status(args: argparse.Namespace) -> int:
    from pyjraft.ops.cluster_status import collect, render_json, render_table
    from pyjraft.transport.tls import TlsConfig

    try:
        tls = TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    rounds = 0
    while True:
        rows = await collect(
            peers,
            group=args.group,
            http=args.http,
            service=args.service,
            timeout=args.timeout,
            tls=tls,
        )
        if args.json:
            print(render_json(rows), flush=True)
        else:
            if args.watch is not None and sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")
            if args.watch is not None:
                print(time.strftime("%Y-%m-%d %H:%M:%S"))
            print(render_table(rows), flush=True)
        rounds += 1
        if args.watch is None or (args.iterations and rounds >= args.iterations):
            return 0 if all("error" not in r for r in rows) else 1
        await asyncio.sleep(args.watch)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyjraft`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "counter":
        return counter.main(argv[1:], prog="pyjraft counter")
    if argv and argv[0] == "certs":
        from pyjraft.certs import main as certs_main

        return certs_main(argv[1:], prog="pyjraft certs")
    if argv and argv[0] == "bench":
        from pyjraft.bench.driver import main as bench_main

        return bench_main(argv[1:], prog="pyjraft bench")
    if argv and argv[0] == "kv":
        from pyjraft.kv.cli import main as kv_main

        return kv_main(argv[1:], prog="pyjraft kv")
    if argv and argv[0] == "admin":
        from pyjraft.client.admin_cli import main as admin_main

        return admin_main(argv[1:], prog="pyjraft admin")
    p = argparse.ArgumentParser(prog="pyjraft", description="pyjraft: Raft consensus for Python.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser(
        "demo",
        help="run a local 3-replica key-value cluster under load through a leader crash",
        description="Start 3 `pyjraft kv serve` processes on loopback, drive a mixed read/write "
        "load with a live view, kill the leader, restart it, and check that every "
        "acknowledged write is on every replica. Exit status 1 if one is missing (or a read "
        "was stale), 130 after Ctrl-C.",
    )
    d.add_argument(
        "--quick",
        action="store_true",
        help="the short version (well under a minute); the last line is a JSON summary",
    )
    d.add_argument("--json", action="store_true", help="end with the JSON summary line")
    d.add_argument(
        "--counter",
        action="store_true",
        help="the counter walk-through instead (a few increments across a leader crash)",
    )
    d.add_argument("--concurrency", type=int, default=16, help="clients driving the load")
    d.add_argument("--seed", type=int, default=1, help="seeds the workload's choices")
    d.add_argument("--keep", action="store_true", help="keep the data directory and logs")
    d.add_argument("--election-timeout-ms", type=int, default=500)
    d.add_argument(
        "--tls",
        action="store_true",
        help="run the cluster and the client over mutual TLS (certificates made for the demo)",
    )
    d.add_argument(
        "--pid-file", default=os.environ.get("PYJRAFT_DEMO_PID_FILE"), help=argparse.SUPPRESS
    )
    sub.add_parser("counter", help="the replicated counter example (server / client)")
    sub.add_parser("certs", help="make a CA and node/client certificates (pyjraft certs -h)")
    sub.add_parser("bench", help="the benchmark harness (python -m pyjraft.bench)")
    st = sub.add_parser(
        "status",
        help="print a table of a cluster: role, term, indexes, lag of each member",
        description="Ask each member for its status (the RPC status service, or with "
        "--http the ops endpoint's /status.json) and print one row per member and group. "
        "Exit status 1 when a member did not answer.",
    )
    st.add_argument("--peers", required=True, help="member addresses, comma-separated")
    st.add_argument("--group", default=None, help="only this raft group")
    st.add_argument(
        "--http", action="store_true", help="the peers are ops endpoints (HOST:PORT of --http)"
    )
    st.add_argument("--service", default="status", help="RPC status service (default: status)")
    st.add_argument("--timeout", type=float, default=2.0, help="seconds per member")
    st.add_argument("--json", action="store_true", help="one JSON line per round")
    st.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        default=None,
        metavar="SECONDS",
        help="repeat every SECONDS (default 1) until interrupted",
    )
    st.add_argument("--iterations", type=int, default=0, help=argparse.SUPPRESS)
    counter.add_tls_arguments(st, server=False)
    sub.add_parser("kv", help="the replicated key-value store (serve, put, get, scan, watch...)")
    sub.add_parser(
        "admin",
        help="membership changes, leadership transfer, snapshots (pyjraft admin -h)",
    )
    args = p.parse_args(argv)
    if args.cmd == "status":
        if args.watch is not None and args.watch <= 0:
            p.error("--watch takes a positive number of seconds")
        try:
            return counter.run(lambda: _status(args))
        except KeyboardInterrupt:
            return 0
    assert args.cmd == "demo"
    if args.concurrency < 1:
        p.error("--concurrency must be >= 1")
    if args.counter:
        from pyjraft.demo.counter import run_counter_demo

        signal.signal(signal.SIGTERM, _on_sigterm)
        return counter.run(lambda: run_counter_demo(args))
    from pyjraft.demo.kv_demo import run_kv_demo

    return counter.run(lambda: run_kv_demo(args))


if __name__ == "__main__":
    sys.exit(main())
