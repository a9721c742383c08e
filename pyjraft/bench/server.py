"""One pyjraft cluster member for the benchmark, run as its own process.

``python -m pyjraft.bench.server --port P --peers A,B,C --data-dir D ...``

It starts a `Node` over a `TcpTransport`, registers the ``bench.apply``
service (``await node.apply(request)``, for ``--placement client``) and
``bench.ping`` (an empty round trip through the RPC stack), then speaks
JSON lines: commands on stdin, replies on stdout (see `pyjraft.bench.driver`).

Commands: ``status``; ``run`` (a closed-loop workload calling `Node.apply`
in this process, answered with the raw latencies, and with ``"times": true``
in its spec each write's start on this process's ``perf_counter_ns``);
``snapshot`` (`Node.snapshot`, answered with its start and end on the same
clock); ``echo`` (start a raw TCP echo server for the round-trip floor);
``exit``. ``--machine`` picks the state machine (`pyjraft.bench.machines`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from pyjraft.bench._proc import emit, set_pdeathsig, start_echo_server, start_watchdog
from pyjraft.bench.machines import CountingMachine, make_machine
from pyjraft.examples.counter import add_snapshot_arguments, snapshot_options
from pyjraft.node import Node, NodeOptions, tune_gc
from pyjraft.transport.tcp import TcpTransport


class GcPauses:
    """Counts garbage collections per generation and their pauses (via `gc.callbacks`)."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ns = [0, 0, 0]
        self.max_ns = [0, 0, 0]
        self._t0 = 0

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter_ns()
            return
        gen = int(info["generation"])
        dt = time.perf_counter_ns() - self._t0
        self.count[gen] += 1
        self.total_ns[gen] += dt
        self.max_ns[gen] = max(self.max_ns[gen], dt)

    def start(self) -> None:
        """Begin counting."""
        gc.callbacks.append(self._cb)

    def stop(self) -> None:
        """Stop counting."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._cb)

    def summary(self) -> dict[str, Any]:
        """Collections, total and longest pause (ms) per generation."""
        return {
            "collections": self.count,
            "total_ms": [round(x / 1e6, 3) for x in self.total_ns],
            "max_ms": [round(x / 1e6, 3) for x in self.max_ns],
        }


async def run_workload(node: Node, spec: dict[str, Any]) -> dict[str, Any]:
    """Drive ``spec["ops"]`` writes (or, with ``spec["duration_s"]``, as many as
    that many seconds allow) with ``spec["concurrency"]`` callers in a closed
    loop, after ``spec["warmup"]`` unmeasured ones; return raw latencies in
    microseconds and the CPU this process used meanwhile."""
    payload = os.urandom(int(spec["payload"]))
    conc = max(1, int(spec["concurrency"]))
    progress = bool(spec.get("progress", True))
    clock = time.perf_counter_ns

    starts: list[int] | None = None  # the measured phase's write starts, if asked for

    async def phase(
        n: int, lat: list[int], errors: dict[str, int], duration_s: float | None = None
    ) -> float:
        # With a duration, no new write starts after it; those in flight finish.
        stop_at = None if duration_s is None else clock() + int(duration_s * 1e9)
        todo = iter(range(n)) if stop_at is None else itertools.count()
        apply = node.apply

        async def worker() -> None:
            for _ in todo:
                t0 = clock()
                if stop_at is not None and t0 >= stop_at:
                    return
                try:
                    await apply(payload)
                except Exception as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    continue
                lat.append((clock() - t0) // 1000)
                if starts is not None:
                    starts.append(t0)

        t0 = time.perf_counter()
        callers = conc if stop_at is not None else min(conc, n)
        if spec.get("api") == "submit":
            await by_callbacks(n if stop_at is None else -1, callers, stop_at, lat, errors)
        else:
            await asyncio.gather(*(worker() for _ in range(callers)))
        return time.perf_counter() - t0

    async def by_callbacks(
        n: int, callers: int, stop_at: int | None, lat: list[int], errors: dict[str, int]
    ) -> None:
        # A window of `callers` writes in flight through node.submit: each
        # completion callback records its latency and submits the next write,
        # until n are submitted (n < 0: until stop_at).
        submit = node.submit
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        state = [n, 0]  # left to submit, in flight

        def more() -> bool:
            return state[0] != 0 and (stop_at is None or clock() < stop_at)

        def one_ended() -> None:
            state[1] -= 1
            if more():
                start()
            elif state[1] == 0 and not finished.done():
                finished.set_result(None)

        def start() -> None:
            state[0] -= 1
            state[1] += 1
            t0 = clock()

            def done(_result: Any, exc: BaseException | None) -> None:
                if exc is None:
                    lat.append((clock() - t0) // 1000)
                else:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                one_ended()

            try:
                submit(payload, done)
            except Exception as e:
                # Refused at once (not leader, overloaded): count it and go on
                # in the next loop turn, not by recursion.
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                loop.call_soon(one_ended)

        for _ in range(callers):
            if more():
                start()
        if state[1] == 0 and not finished.done():
            finished.set_result(None)
        await finished

    warm_lat: list[int] = []
    warm_err: dict[str, int] = {}
    if spec.get("warmup", 0):
        await phase(int(spec["warmup"]), warm_lat, warm_err)

    lat: list[int] = []
    errors: dict[str, int] = {}
    starts = [] if spec.get("times") else None

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            emit({"type": "progress", "done": len(lat) + sum(errors.values())})

    reporter = asyncio.create_task(report()) if progress else None
    prof: Any = None
    if spec.get("profile"):
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    stats0 = dict(node.stats)
    gc_watch = GcPauses()
    gc_watch.start()
    cpu0 = time.process_time()
    try:
        duration = spec.get("duration_s")
        elapsed = await phase(
            int(spec["ops"]), lat, errors, None if duration is None else float(duration)
        )
    finally:
        cpu = time.process_time() - cpu0
        gc_watch.stop()
        if prof is not None:
            prof.disable()
            prof.dump_stats(str(spec["profile"]))
        if reporter is not None:
            reporter.cancel()
    node_stats = {k: v - stats0.get(k, 0) for k, v in node.stats.items()}
    return {
        "type": "result",
        "lat_us": lat,
        "errors": errors,
        "warmup_errors": warm_err,
        "elapsed_s": elapsed,
        "cpu_s": cpu,
        "node_stats": node_stats,
        "gc": gc_watch.summary(),
        **({} if starts is None else {"start_ns": starts}),
    }


def _stdin_lines(loop: asyncio.AbstractEventLoop, q: asyncio.Queue[str | None]) -> None:
    for line in sys.stdin:
        loop.call_soon_threadsafe(q.put_nowait, line)
    loop.call_soon_threadsafe(q.put_nowait, None)


async def amain(args: argparse.Namespace) -> None:
    """Run the node and serve driver commands until ``exit`` or stdin EOF."""
    tls = None
    if args.tls_dir:
        from pathlib import Path

        from pyjraft.certs import file_stem
        from pyjraft.transport.tls import TlsConfig

        d = Path(args.tls_dir)
        stem = file_stem("node", f"127.0.0.1:{args.port}")
        tls = TlsConfig.load(d / f"{stem}.pem", d / f"{stem}-key.pem", d / "ca.pem")
    transport = await TcpTransport.start("127.0.0.1", args.port, tls=tls)
    peers = tuple(p for p in args.peers.split(",") if p)
    options = NodeOptions(
        id=transport.address,
        peers=peers,
        data_dir=args.data_dir,
        sync=not args.no_sync,
        **(
            {}
            if args.leader_write_thread == "default"
            else {"leader_write_thread": args.leader_write_thread == "on"}
        ),
        **({} if args.busy_poll_us is None else {"busy_poll_us": args.busy_poll_us}),
        **(
            {}
            if args.election_timeout_ms is None
            else {"election_timeout_ms": args.election_timeout_ms}
        ),
        metrics=args.metrics,
        **snapshot_options(args),
    )
    machine = make_machine(args.machine, args.state_bytes)
    node = await Node.start(options, machine, transport)
    ops = None
    if args.http is not None:
        from pyjraft.ops import OpsServer
        from pyjraft.transport import parse_address

        ops = OpsServer(nodes=[node])
        await ops.start(*parse_address(args.http))
    if args.tune_gc:
        tune_gc()

    def apply_service(request: Any) -> asyncio.Future[Any]:
        # A future, not a coroutine: the transport answers it without a task.
        return node.apply(request)

    async def ping_service(request: Any) -> Any:
        return request

    transport.register_service("bench.apply", apply_service)
    transport.register_service("bench.ping", ping_service)

    loop = asyncio.get_running_loop()
    q: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, q), daemon=True).start()
    emit({"type": "ready", "addr": transport.address, "pid": os.getpid()})
    tasks: set[asyncio.Task[None]] = set()

    async def run_and_report(spec: dict[str, Any]) -> None:
        try:
            emit(await run_workload(node, spec))
        except Exception as e:
            emit({"type": "result", "error": repr(e)})

    async def snapshot_and_report() -> None:
        t0 = time.perf_counter_ns()
        try:
            manifest = await node.snapshot()
        except Exception as e:
            emit({"type": "snapshot", "error": repr(e)})
            return
        emit(
            {
                "type": "snapshot",
                "index": manifest.index,
                "bytes": manifest.total_size,
                "t0_ns": t0,
                "t1_ns": time.perf_counter_ns(),
                "last_save": node.status()["snapshot"]["last_save"],
            }
        )

    try:
        while True:
            line = await q.get()
            if line is None:
                break
            cmd = _parse(line)
            if cmd is None:
                continue
            name = cmd.get("cmd")
            if name == "status":
                st = node.status()
                emit(
                    {
                        "type": "status",
                        "addr": transport.address,
                        "role": st["role"],
                        "leader": st["leader"],
                        "term": st["term"],
                        "commit_index": st["commit_index"],
                        "applied_index": st["applied_index"],
                        "is_leader": node.is_leader,
                        "applied": machine.count,
                        "cpu_s": time.process_time(),
                        "pid": os.getpid(),
                        "transport": transport.stats.as_dict(),
                        "node_stats": st.get("stats", {}),
                        "first_index": st["first_index"],
                        "last_index": st["last_index"],
                        "snapshot": st["snapshot"],
                        "rss_bytes": _rss_bytes(),
                    }
                )
            elif name == "snapshot":
                t = asyncio.create_task(snapshot_and_report())
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            elif name == "run":
                t = asyncio.create_task(run_and_report(cmd["spec"]))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
            elif name == "echo":
                emit({"type": "echo", "port": start_echo_server()})
            elif name == "exit":
                break
    finally:
        for t in list(tasks):
            t.cancel()
        if ops is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ops.close(), 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.shutdown(), 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.close(), 5.0)


def _rss_bytes() -> int:
    """This process's resident set size (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


__all__ = ["CountingMachine", "GcPauses", "main", "run_workload"]


def _parse(line: str) -> dict[str, Any] | None:
    line = line.strip()
    if not line:
        return None
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run the node process."""
    ap = argparse.ArgumentParser(description="one pyjraft benchmark node (internal)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peers", required=True, help="comma-separated host:port of all members")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tls-dir", default="", help="certificates made by the driver (--tls)")
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--leader-write-thread", choices=["on", "off", "default"], default="default")
    ap.add_argument("--busy-poll-us", type=int, default=None)
    ap.add_argument("--election-timeout-ms", type=int, default=None)
    ap.add_argument("--metrics", action="store_true", help="NodeOptions(metrics=True)")
    add_snapshot_arguments(ap)
    ap.add_argument("--machine", choices=["counting", "blob", "paged"], default="counting")
    ap.add_argument("--state-bytes", type=int, default=0, help="of the blob and paged machines")
    ap.add_argument("--http", default=None, metavar="HOST:PORT", help="serve pyjraft.ops there")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument(
        "--no-tune-gc", dest="tune_gc", action="store_false", help="leave the GC at defaults"
    )
    ap.add_argument("--deadline", type=float, required=True, help="wall-clock time to exit at")
    args = ap.parse_args(argv)
    set_pdeathsig()
    start_watchdog(args.deadline, os.getppid())
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(amain(args))
    else:
        asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
