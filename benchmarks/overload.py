"""Benchmark: does an overloaded leader keep its leadership? (issue 13, section 4)

Starts three ``python -m pyjraft.examples.counter server`` processes on
127.0.0.1 (durable unless ``--unsafe-no-sync``), finds the leader, then:

1. **Capacity.** A closed loop of ``--capacity-connections`` connections x
   ``--capacity-window`` pipelined increments against the leader for
   ``--capacity-seconds``: the increments/s the cluster sustains, C.
2. **Floods** (``--floods`` of them, ``--seconds`` each). ``--connections``
   raw connections to the leader (spread over ``--workers`` client
   processes), each keeping up to ``--window`` increments in flight, offered
   open-loop at ``--overload`` x C in total (``--rate`` sets the rate
   instead; ``--rate 0``: as fast as each window allows). After a flood the
   clients stop sending and wait up to ``--drain`` seconds for the answers.

For each flood it reports whether the leader kept its leadership (same
leader, same term, no other leader or term seen by the status polls every
``--poll`` seconds), the answers by kind (``ok``, ``overloaded``,
``unknown_outcome``, ``not_leader``, ``unavailable``, ...), answers slower
than ``--client-timeout`` (a `RaftClient` would have given up on those
and reported an unknown outcome), requests never answered, the latency of
the ``ok`` answers, the slowest status reply, and each follower's p99 and
largest gap between the leader's heartbeats during the flood (from the
nodes' ``heartbeat_gap`` histograms, an upper bound at the histogram's
resolution of 10 ms), against the goal: under a third of the election
timeout. The last line of output is one JSON object with every figure.

    python benchmarks/overload.py [--floods 3] [--seconds 20] [--overload 2]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from pyjraft.bench._proc import set_pdeathsig
from pyjraft.examples.counter import COUNTER_SERVICE, STATUS_SERVICE
from pyjraft.node.loop import run
from pyjraft.testing.ports import free_ports
from pyjraft.transport import RpcClient
from pyjraft.transport.codec import decode_response, encode_request
from pyjraft.transport.framing import FrameDecoder, Kind, encode_frame

_INCR = ["incr", 1]


# -- the client worker (a process of its own) -----------------------------------------


class _Tally:
    """What one worker saw."""

    def __init__(self, client_timeout: float) -> None:
        self.client_timeout = client_timeout
        self.kinds: dict[str, int] = {}
        self.sent = 0
        self.not_sent = 0  # offered while every window was full
        self.late = 0
        self.lost_in_flight = 0
        self.ok_latency = array.array("d")

    def answer(self, payload: Any, ok: bool, latency: float) -> None:
        if not ok:
            kind = "rpc_error"
        elif type(payload) is dict and "ok" in payload:
            kind = "ok"
            self.ok_latency.append(latency)
        elif type(payload) is dict and "error" in payload:
            kind = str(payload["error"])
        else:
            kind = "malformed"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if latency > self.client_timeout:
            self.late += 1


class _FloodConnection(asyncio.Protocol):
    """One connection keeping up to ``window`` increments in flight."""

    def __init__(self, tally: _Tally, window: int, closed_loop: bool, ids: Any) -> None:
        self.tally = tally
        self.window = window
        self.closed_loop = closed_loop
        self.ids = ids
        self.inflight: dict[int, float] = {}
        self.frames = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.sending = True
        self.closed = asyncio.get_running_loop().create_future()
        self.ok = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def room(self) -> int:
        return self.window - len(self.inflight) if self.transport is not None else 0

    def send(self, n: int) -> None:
        transport = self.transport
        if transport is None or n <= 0 or transport.is_closing():
            return
        now = time.perf_counter()
        out = []
        for _ in range(n):
            rid = next(self.ids)
            self.inflight[rid] = now
            out.append(encode_frame(Kind.REQUEST, encode_request(rid, COUNTER_SERVICE, _INCR)))
        transport.writelines(out)
        self.tally.sent += n

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        answered = 0
        for kind, body in self.frames.feed(data):
            if kind is not Kind.RESPONSE:
                continue
            rid, ok, payload = decode_response(body)
            t0 = self.inflight.pop(rid, None)
            if t0 is None:
                continue
            self.tally.answer(payload, ok, now - t0)
            if ok and type(payload) is dict and "ok" in payload:
                self.ok += 1
            answered += 1
        if self.closed_loop and self.sending:
            self.send(answered)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tally.lost_in_flight += len(self.inflight)
        self.inflight.clear()
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tally = _Tally(spec["client_timeout"])
    host, port = spec["leader"].rsplit(":", 1)
    rate = float(spec["rate"])
    closed_loop = rate <= 0
    ids = itertools.count(1)
    conns: list[_FloodConnection] = []
    for _ in range(spec["connections"]):
        _, proto = await loop.create_connection(
            lambda: _FloodConnection(tally, spec["window"], closed_loop, ids), host, int(port)
        )
        conns.append(proto)
    start = time.perf_counter()
    end = start + spec["seconds"]
    if closed_loop:
        for c in conns:
            c.send(c.window)
        await asyncio.sleep(spec["seconds"])
    else:
        offered = 0
        rr = 0
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            due = int(rate * (now - start)) - offered
            offered += due
            # Round robin over the connections with room; what fits nowhere is
            # not sent (an open-loop client does not queue without limit).
            while due > 0:
                progressed = False
                for _ in range(len(conns)):
                    c = conns[rr % len(conns)]
                    rr += 1
                    n = min(due, c.room(), 64)
                    if n > 0:
                        c.send(n)
                        due -= n
                        progressed = True
                        if due <= 0:
                            break
                if not progressed:
                    tally.not_sent += due
                    break
            await asyncio.sleep(0.002)
    for c in conns:
        c.sending = False
    drain_end = time.perf_counter() + spec["drain"]
    while any(c.inflight for c in conns) and time.perf_counter() < drain_end:
        await asyncio.sleep(0.05)
    unanswered = sum(len(c.inflight) for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(tally.ok_latency)
    per_conn = sorted(c.ok for c in conns)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    return {
        "sent": tally.sent,
        "not_sent_window_full": tally.not_sent,
        "answers": tally.kinds,
        "late": tally.late,
        "unanswered": unanswered,
        "lost_in_flight": tally.lost_in_flight,
        "ok_p50_ms": pct(0.5),
        "ok_p99_ms": pct(0.99),
        "ok_max_ms": pct(1.0),
        "ok_per_connection": [per_conn[0], per_conn[len(per_conn) // 2], per_conn[-1]],
        "elapsed_s": round(time.perf_counter() - start, 3),
        "cpu_s": round(time.process_time(), 2),
    }


# -- the driver ---------------------------------------------------------------------------


async def _status(rpc: RpcClient, addr: str, timeout: float = 5.0) -> dict[str, Any] | None:
    try:
        st = await rpc.call(addr, STATUS_SERVICE, None, timeout=timeout)
    except Exception:
        return None
    return st if isinstance(st, dict) else None


async def _wait_leader(rpc: RpcClient, addrs: list[str], timeout: float = 30.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sts = [await _status(rpc, a, 1.0) for a in addrs]
        leaders = [s for s in sts if s and s["role"] == "leader"]
        if len(leaders) == 1 and all(s and s["leader"] == leaders[0]["id"] for s in sts):
            return leaders[0]
        await asyncio.sleep(0.1)
    raise RuntimeError("no leader")


async def _run_workers(
    args: argparse.Namespace, leader: str, n_conns: int, window: int, rate: float, seconds: float
) -> list[dict[str, Any]]:
    workers = max(1, min(args.workers, n_conns))
    procs = []
    for i in range(workers):
        spec = {
            "leader": leader,
            "connections": n_conns // workers + (1 if i < n_conns % workers else 0),
            "window": window,
            "rate": rate / workers,
            "seconds": seconds,
            "drain": args.drain,
            "client_timeout": args.client_timeout,
        }
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                json.dumps(spec),
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
            )
        )
    out = []
    for p in procs:
        stdout, _ = await p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a client worker failed with status {p.returncode}")
        out.append(json.loads(stdout.decode().splitlines()[-1]))
    return out


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    answers: dict[str, int] = {}
    for r in results:
        for k, v in r["answers"].items():
            answers[k] = answers.get(k, 0) + v
    total = {
        k: sum(r[k] for r in results)
        for k in ("sent", "not_sent_window_full", "late", "unanswered", "lost_in_flight")
    }
    return {
        **total,
        "answers": answers,
        "ok_p50_ms": max((r["ok_p50_ms"] or 0) for r in results),
        "ok_p99_ms": max((r["ok_p99_ms"] or 0) for r in results),
        "ok_max_ms": max((r["ok_max_ms"] or 0) for r in results),
        "client_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        # Fairness: the fewest, median (of the medians) and most increments
        # applied for one connection.
        "ok_per_connection_min_med_max": [
            min(r["ok_per_connection"][0] for r in results),
            sorted(r["ok_per_connection"][1] for r in results)[len(results) // 2],
            max(r["ok_per_connection"][2] for r in results),
        ],
    }


def _gap_p99(before: dict[str, Any], after: dict[str, Any]) -> tuple[int, float | None]:
    """Gaps during the flood and an upper bound of their p99, in ms, from the
    difference of two cumulative histograms."""
    b = dict(before["buckets"])
    a = [(bound, n - b.get(bound, 0)) for bound, n in after["buckets"]]
    total = after["count"] - before["count"]
    if total <= 0:
        return 0, None
    for bound, n in a:
        if n >= 0.99 * total:
            return total, round(bound * 1000, 1)
    return total, None  # above the largest bound


async def _loop_lag(session: Any, url: str) -> float | None:
    try:
        async with session.get(url) as r:
            text = await r.text()
    except Exception:
        return None
    for line in text.splitlines():
        if line.startswith("pyjraft_event_loop_lag_max_seconds "):
            return float(line.split()[1])
    return None


async def _poll(
    rpc: RpcClient,
    addrs: list[str],
    every: float,
    stop: asyncio.Event,
    seen: dict[str, Any],
    http: dict[str, str],
) -> None:
    import aiohttp

    session = aiohttp.ClientSession() if http else None

    async def lag(addr: str) -> None:
        assert session is not None
        v = await _loop_lag(session, f"http://{http[addr]}/metrics")
        if v is not None:
            seen["loop_lag_max_ms"][addr] = max(
                seen["loop_lag_max_ms"].get(addr, 0.0), round(v * 1000, 1)
            )

    async def one(addr: str) -> None:
        if http:
            await lag(addr)
        t0 = time.perf_counter()
        st = await _status(rpc, addr, timeout=10.0)
        took = time.perf_counter() - t0
        seen["status_max_ms"] = max(seen["status_max_ms"], round(took * 1000, 1))
        if st is None:
            seen["status_failures"] += 1
            return
        if st["role"] == "leader":
            seen["leaders"].add((st["id"], st["term"]))
        seen["terms"].add(st["term"])
        seen["max_pending"] = max(seen["max_pending"], st.get("pending", 0))

    try:
        while not stop.is_set():
            await asyncio.gather(*(one(a) for a in addrs))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)
    finally:
        if session is not None:
            await session.close()


async def _flood(
    args: argparse.Namespace, rpc: RpcClient, addrs: list[str], rate: float, http: dict[str, str]
) -> dict[str, Any]:
    lead = await _wait_leader(rpc, addrs)
    leader, term = lead["id"], lead["term"]
    followers = [a for a in addrs if a != leader]
    before = {a: (await _status(rpc, a))["heartbeat_gap"] for a in followers}  # type: ignore[index]
    seen: dict[str, Any] = {
        "status_max_ms": 0.0,
        "status_failures": 0,
        "leaders": set(),
        "terms": set(),
        "max_pending": 0,
        "loop_lag_max_ms": {},
    }
    stop = asyncio.Event()
    poller = asyncio.ensure_future(_poll(rpc, addrs, args.poll, stop, seen, http))
    try:
        results = await _run_workers(
            args, leader, args.connections, args.window, rate, args.seconds
        )
    finally:
        stop.set()
        await poller
    after = {a: await _status(rpc, a, 10.0) for a in addrs}
    gaps = {}
    for a in followers:
        st = after[a]
        if st is None:
            gaps[a] = {"error": "no status"}
            continue
        count, p99 = _gap_p99(before[a], st["heartbeat_gap"])
        gaps[a] = {"gaps": count, "p99_ms_upper": p99, "max_ms": st["heartbeat_gap"]["max_ms"]}
    end_leader = after[leader]
    kept = (
        end_leader is not None
        and end_leader["role"] == "leader"
        and end_leader["term"] == term
        and seen["leaders"] <= {(leader, term)}
        and seen["terms"] <= {term}
    )
    merged = _merge(results)
    threshold = args.election_timeout_ms / 3
    p99s = [g["p99_ms_upper"] for g in gaps.values() if g.get("p99_ms_upper") is not None]
    return {
        "leader": leader,
        "term_before": term,
        "terms_seen": sorted(seen["terms"]),
        "leader_kept": kept,
        "offered_rate": round(rate),
        "ok_per_s": round(merged["answers"].get("ok", 0) / args.seconds),
        **merged,
        "status_max_ms": seen["status_max_ms"],
        "status_failures": seen["status_failures"],
        "max_pending_seen": seen["max_pending"],
        "loop_lag_max_ms": {
            ("leader" if a == leader else a): v for a, v in seen["loop_lag_max_ms"].items()
        },
        "heartbeat_gaps": gaps,
        "heartbeat_gap_p99_ms": max(p99s) if p99s else None,
        "heartbeat_goal_ms": round(threshold, 1),
        "heartbeat_goal_met": bool(p99s) and max(p99s) < threshold,
    }


async def _settle(rpc: RpcClient, addrs: list[str], timeout: float = 60.0) -> None:
    """Wait until the cluster has a leader and everything is applied everywhere."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        sts = [await _status(rpc, a, 2.0) for a in addrs]
        if all(sts):
            lead = [s for s in sts if s and s["role"] == "leader"]
            commit = max(s["commit_index"] for s in sts if s)
            if (
                lead
                and all(s and s["applied_index"] >= commit for s in sts)
                and not any(s and s["pending"] for s in sts)
            ):
                return
        await asyncio.sleep(0.2)


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="pyjraft-overload-", dir=args.dir)
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    procs: list[subprocess.Popen[bytes]] = []
    rpc = RpcClient()
    http = {}
    if args.loop_lag:
        http = dict(zip(addrs, (f"127.0.0.1:{p}" for p in free_ports(3)), strict=True))
    try:
        for a in addrs:
            port = a.rsplit(":", 1)[1]
            cmd = [
                sys.executable, "-m", "pyjraft.examples.counter", "server",
                "--data-dir", os.path.join(base, port), "--group", "overload",
                "--id", a, "--peers", ",".join(addrs),
                "--election-timeout-ms", str(args.election_timeout_ms),
                "--heartbeat-ms", str(args.heartbeat_ms),
                "--die-with-parent", "--log-level", args.node_log_level,
            ]  # fmt: skip
            if http:
                cmd += ["--http", http[a]]
            if args.unsafe_no_sync:
                cmd.append("--unsafe-no-sync")
            with open(os.path.join(base, f"node-{port}.log"), "ab") as err:
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=err))
        lead = await _wait_leader(rpc, addrs)
        print(f"leader {lead['id']}; data and logs in {base}", flush=True)
        capacity = None
        rate = args.rate
        if rate is None:
            res = _merge(
                await _run_workers(
                    args,
                    lead["id"],
                    args.capacity_connections,
                    args.capacity_window,
                    0.0,
                    args.capacity_seconds,
                )
            )
            capacity = round(res["answers"].get("ok", 0) / args.capacity_seconds)
            rate = args.overload * capacity
            print(
                f"capacity: {capacity} increments/s ({args.capacity_connections} connections x "
                f"{args.capacity_window} in flight; answers {res['answers']}, ok p99 "
                f"{res['ok_p99_ms']} ms); flooding at {rate:.0f}/s",
                flush=True,
            )
            await _settle(rpc, addrs)
        floods = []
        for i in range(args.floods):
            f = await _flood(args, rpc, addrs, rate, http)
            floods.append(f)
            a = f["answers"]
            print(
                f"flood {i + 1}: leader kept {f['leader_kept']} (terms {f['terms_seen']}); "
                f"ok {a.get('ok', 0)} ({f['ok_per_s']}/s, p99 {f['ok_p99_ms']} ms), "
                f"overloaded {a.get('overloaded', 0)}, unknown outcome "
                f"{a.get('unknown_outcome', 0)}, late>{args.client_timeout}s {f['late']}, "
                f"unanswered {f['unanswered']}, not sent {f['not_sent_window_full']}, ok per "
                f"connection min/med/max {f['ok_per_connection_min_med_max']}; "
                f"heartbeat gap p99 <= {f['heartbeat_gap_p99_ms']} ms (goal < "
                f"{f['heartbeat_goal_ms']}); status max {f['status_max_ms']} ms"
                + (f"; loop lag max {f['loop_lag_max_ms']} ms" if http else ""),
                flush=True,
            )
            await _settle(rpc, addrs)
        return {
            "benchmark": "overload",
            "sync": not args.unsafe_no_sync,
            "election_timeout_ms": args.election_timeout_ms,
            "heartbeat_ms": args.heartbeat_ms,
            "connections": args.connections,
            "window": args.window,
            "capacity_per_s": capacity,
            "offered_per_s": round(rate),
            "floods": floods,
            "leader_kept": sum(f["leader_kept"] for f in floods),
            "heartbeat_goal_met": sum(f["heartbeat_goal_met"] for f in floods),
            "unknown_outcome": sum(f["answers"].get("unknown_outcome", 0) for f in floods),
            "overloaded": sum(f["answers"].get("overloaded", 0) for f in floods),
            "late": sum(f["late"] for f in floods),
            "unanswered": sum(f["unanswered"] for f in floods),
        }
    finally:
        await rpc.close()
        for p in procs:
            with contextlib.suppress(OSError):
                p.send_signal(signal.SIGKILL)
        for p in procs:
            p.wait(10)
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    """Parse arguments; run the driver (or, with ``--worker``, one client process)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        set_pdeathsig()
        spec = json.loads(sys.argv[2])

        async def work() -> int:
            print(json.dumps(await _worker(spec)), flush=True)
            return 0

        sys.exit(run(work))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--floods", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each flood")
    ap.add_argument("--connections", type=int, default=150)
    ap.add_argument("--window", type=int, default=1024, help="increments in flight per connection")
    ap.add_argument("--overload", type=float, default=2.0, help="offered load / capacity")
    ap.add_argument(
        "--rate", type=float, default=None, help="offered increments/s (0: closed loop)"
    )
    ap.add_argument("--workers", type=int, default=2, help="client processes")
    ap.add_argument("--capacity-seconds", type=float, default=10.0)
    ap.add_argument("--capacity-connections", type=int, default=32)
    ap.add_argument("--capacity-window", type=int, default=512)
    ap.add_argument("--drain", type=float, default=30.0, help="seconds to wait for answers")
    ap.add_argument("--client-timeout", type=float, default=2.0, help="RaftClient's default")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between status polls")
    ap.add_argument("--election-timeout-ms", type=int, default=1000)
    ap.add_argument("--heartbeat-ms", type=int, default=100)
    ap.add_argument("--unsafe-no-sync", action="store_true")
    ap.add_argument("--dir", default=None, help="parent of the data directories")
    ap.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    ap.add_argument("--node-log-level", default="WARNING", help="the nodes' --log-level")
    ap.add_argument(
        "--loop-lag",
        action="store_true",
        help="run the nodes with --http and report each one's largest event-loop lag",
    )
    args = ap.parse_args()

    async def go() -> int:
        print(json.dumps(await _main(args)))
        return 0

    run(go)


if __name__ == "__main__":
    main()
