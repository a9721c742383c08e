"""`python -m pyjraft.bench.memory`: RSS of nodes holding a large log under write load.

The goal it checks: *a node holding a 1 GiB log and serving 1,000 in-flight
writes stays under 300 MiB RSS*.

``python -m pyjraft.bench.memory [--log-bytes 1GiB] [--payload 100] [--batch 1]
[--concurrency 1000] [--placement client|leader] [--seconds 60] [--data-root DIR]
[--open-only] [--timeout S]``

The default ``--batch 1`` is the worst case for the log's in-memory index (a
log written at concurrency 1); ``--batch 1000`` is a log written under load.
A run takes a few minutes on 2 cores: building 1 GiB of one-entry batches and
its first verifying open take about 40 s, and three nodes re-applying 8
million entries on two cores take one to two minutes.

1. **Build.** One log of ``--log-bytes`` is written for node 0: entry 1 is a
   no-op of term 1, every other entry holds ``--payload`` bytes, ``--batch``
   entries per batch record (1: as written at concurrency 1, the largest
   in-memory index; 1000: as written under 1,000 in-flight writes). The
   segment files are written directly (`pyjraft.storage.segment_file`
   headers, batch records made by `pyjraft.storage.record.encode_batch`: the
   same bytes `append` writes),
   then opened once by `SegmentLogStorage`, which verifies every batch and
   writes the sealed segments' sidecar indexes, as a log that was appended
   normally has them. The directory is copied to nodes 1 and 2, and each
   node gets term 1 with a vote for node 0 (`FileMetaStorage`): the state of
   a cluster whose term-1 leader wrote the whole log.
2. **Open alone.** A fresh process opens node 0's log and reports its RSS
   before and after, and the bytes of the segments' in-memory index arrays.
3. **Recover.** Three `pyjraft.bench.server` processes start on those data
   directories (the same processes as ``python -m pyjraft.bench``). Each
   recovers its log; a leader is elected and commits its no-op, and every
   node applies the whole log (applied indexes are not persisted, so a
   restarted node re-applies its log through the state machine). Measured
   per node: time from spawn to ready (storage opened), time until it has
   applied everything, RSS then, and the recovery peak (VmHWM).
4. **Load.** VmHWM is reset (``/proc/PID/clear_refs``), then ``--concurrency``
   closed-loop writers of ``--payload`` bytes run for ``--seconds``, in runs
   of a few seconds (so the harness's latency lists stay small), while VmRSS
   of every node is sampled. The load peak is VmHWM at the end. Placement
   ``client`` (default): the writers are in this process and call the
   leader's ``bench.apply`` service over TCP, so the leader holds 1,000
   in-flight requests and, as in production, a distinct data object per
   entry. Placement ``leader``: they run inside the leader and call
   `Node.apply` with one shared payload object, which understates the
   leader's memory (every cached entry then shares its data).

Page cache: the logs were just written or copied, so recovery reads from
memory, not disk; the times are CPU-bound lower bounds.

The last line of output is one JSON object: ``max_rss_mib`` (the largest
VmHWM of any node over recovery and load), ``goal_rss_mib`` (300) and ``ok``
(``max_rss_mib < goal_rss_mib``), plus every per-node figure. Exit code 0
when the run completed (whatever ``ok`` says), 2 on a failed run, 3 on timeout.
Temporary directories are removed and every child is killed by pid on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import crc32c

from pyjraft.core.types import Entry, EntryType, HardState

GOAL_RSS_MIB = 300
_MiB = 1 << 20
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_FIRST = struct.Struct("<Q")  # batch header: the first index, at offset 16
_CRC = struct.Struct("<I")  # batch header: the bound CRC32C of bytes [4, end), at offset 0


def parse_size(text: str) -> int:
    """``"1GiB"``, ``"512MiB"``, ``"64M"``, ``"1000000"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1GiB, 512MiB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def _node_default(name: str) -> int:
    """The default of the integer field ``name`` of `NodeOptions` (what the nodes use)."""
    from pyjraft.node.options import NodeOptions

    for f in dataclasses.fields(NodeOptions):
        if f.name == name and isinstance(f.default, int):
            return f.default
    raise RuntimeError(f"NodeOptions has no integer option {name}")


# ---------------------------------------------------------------- the log


def build_log(
    directory: str, log_bytes: int, payload: int, batch: int, segment_bytes: int
) -> dict[str, Any]:
    """Write segment files holding at least ``log_bytes`` into ``directory``.

    Every batch but the first is the same template record with its first
    index and CRC patched (both are header fields), so this costs about a
    microsecond per batch. The result is only trusted once `seal_log` has
    opened it with `SegmentLogStorage`, which verifies every batch.
    """
    from pyjraft.storage.record import SegmentKey, encode_batch
    from pyjraft.storage.segment_file import (
        SEGMENT_HEADER_SIZE,
        encode_segment_header,
        new_nonce,
        segment_name,
    )

    os.makedirs(directory)
    data = os.urandom(payload)
    normal = int(EntryType.NORMAL)
    head = [Entry(1, 1, int(EntryType.NOOP), b"")]
    head += [Entry(1, i, normal, data) for i in range(2, batch + 1)]
    body = [Entry(1, k, normal, data) for k in range(batch)]
    crc = crc32c.crc32c
    pack_first = _FIRST.pack_into
    pack_crc = _CRC.pack_into
    total = 0
    segments = 0
    batches = 0
    nxt = 1
    t0 = time.perf_counter()
    while total < log_bytes:
        segments += 1
        key = SegmentKey(new_nonce())
        # Every batch of a segment carries its tag and a CRC bound to its offset.
        template = bytes(encode_batch(body, 0, -1, key, 0).buf)
        size = SEGMENT_HEADER_SIZE
        with open(os.path.join(directory, segment_name(nxt)), "wb", buffering=8 * _MiB) as f:
            f.write(encode_segment_header(nxt, key.nonce))
            while size < segment_bytes and total + size < log_bytes:
                if nxt == 1:
                    buf = bytes(encode_batch(head, 1, -1, key, size).buf)
                else:
                    rec = bytearray(template)
                    pack_first(rec, 16, nxt)
                    with memoryview(rec) as mv:
                        pack_crc(rec, 0, crc(mv[4:], key.seed(size)))
                    buf = bytes(rec)
                f.write(buf)
                size += len(buf)
                nxt += batch
                batches += 1
        total += size
    return {
        "log_bytes": total,
        "entries": nxt - 1,
        "batches": batches,
        "segments": segments,
        "write_s": round(time.perf_counter() - t0, 2),
    }


def seal_log(directory: str, segment_bytes: int) -> tuple[int, float]:
    """Open the log once (verifying every batch, writing the sidecar indexes);
    return its last index and the seconds it took."""
    from pyjraft.storage.segment_log import SegmentLogStorage

    t0 = time.perf_counter()
    log = SegmentLogStorage(directory, sync=False, segment_bytes=segment_bytes)
    try:
        last = log.last_index()
    finally:
        log.close()
    return last, time.perf_counter() - t0


def probe_open(directory: str, segment_bytes: int) -> dict[str, Any]:
    """Open the log at ``directory`` in this (fresh) process: time, RSS before and
    after, peak, and the bytes of the segments' in-memory index arrays."""
    import gc
    from array import array

    from pyjraft.storage.segment_log import SegmentLogStorage

    gc.collect()
    before = proc_status(os.getpid())
    t0 = time.perf_counter()
    log = SegmentLogStorage(directory, sync=False, segment_bytes=segment_bytes)
    open_s = time.perf_counter() - t0
    gc.collect()
    after = proc_status(os.getpid())
    index_bytes = 0
    for seg in log._segments:
        for name in type(seg).__slots__:
            a = getattr(seg, name, None)
            if isinstance(a, array):
                index_bytes += a.itemsize * len(a)
    out = {
        "open_s": round(open_s, 3),
        "rss_before_mib": _mib(before["VmRSS"]),
        "rss_after_mib": _mib(after["VmRSS"]),
        "rss_delta_mib": _mib(after["VmRSS"] - before["VmRSS"]),
        "hwm_mib": _mib(after["VmHWM"]),
        "index_arrays_mib": round(index_bytes / _MiB, 1),
        "last_index": log.last_index(),
    }
    log.close()
    return out


def _run_probe(directory: str, segment_bytes: int, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pyjraft.bench.memory", "--probe-open", directory]
    cmd += ["--segment-bytes", str(segment_bytes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"open probe failed (rc={proc.returncode}): {proc.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return res


# ----------------------------------------------------------------- /proc


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of ``pid`` in KiB (missing ones absent)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM of ``pid`` to its current RSS (Linux >= 4.0); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class Sampler:
    """Samples VmRSS of some pids every ``interval`` seconds; keeps the maxima."""

    def __init__(self, pids: Sequence[int], interval: float = 0.1) -> None:
        self.pids = list(pids)
        self.interval = interval
        self.max_rss = dict.fromkeys(self.pids, 0)
        self.samples = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sampling (resets the maxima)."""
        self.max_rss = dict.fromkeys(self.pids, 0)
        self.samples = 0
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            for pid in self.pids:
                with contextlib.suppress(OSError):
                    rss = proc_status(pid).get("VmRSS", 0)
                    self.max_rss[pid] = max(self.max_rss[pid], rss)
            self.samples += 1
            await asyncio.sleep(self.interval)


# --------------------------------------------------------------- cluster


async def _statuses(children: Sequence[Any], timeout: float) -> list[dict[str, Any]]:
    return list(
        await asyncio.gather(*(c.request({"cmd": "status"}, "status", timeout) for c in children))
    )


async def run_cluster(
    args: argparse.Namespace, tmp: str, last_index: int, deadline: float, out: dict[str, Any]
) -> None:
    """Steps 3 and 4 of the module docstring; fills ``out``."""
    from pyjraft.bench.children import Child
    from pyjraft.bench.runs import client_workload
    from pyjraft.storage.meta import FileMetaStorage
    from pyjraft.testing.ports import free_ports

    ports = free_ports(3)
    addrs = [f"127.0.0.1:{p}" for p in ports]
    for i in range(3):
        FileMetaStorage(os.path.join(tmp, f"node{i}", "default")).save(HardState(1, addrs[0]))
    children: list[Any] = []
    nodes: list[dict[str, Any]] = [{"node": i} for i in range(3)]
    out["nodes"] = nodes
    try:
        t_spawn = time.perf_counter()
        for i, port in enumerate(ports):
            argv = ["-m", "pyjraft.bench.server", "--port", str(port), "--peers", ",".join(addrs)]
            argv += ["--data-dir", os.path.join(tmp, f"node{i}"), "--deadline", str(deadline)]
            argv += ["--loop", args.loop]
            log_path = os.path.join(tmp, f"node{i}.log")
            children.append(await Child.spawn(f"pyjraft node{i}", argv, log_path))
        pids = [c.pid for c in children]
        out["node_pids"] = pids
        sampler = Sampler(pids)
        sampler.start()

        async def ready(i: int) -> None:
            c = children[i]
            c.addr = (await c.expect("ready", max(1.0, deadline - time.time())))["addr"]
            nodes[i]["open_s"] = round(time.perf_counter() - t_spawn, 2)
            nodes[i]["rss_at_ready_mib"] = _mib(proc_status(c.pid)["VmRSS"])

        await asyncio.gather(*(ready(i) for i in range(3)))
        # Everyone applied everything, including the new leader's no-op.
        target = last_index + 1
        leader = None
        while True:
            if time.time() > deadline:
                raise TimeoutError("recovery did not finish before the deadline")
            sts = await _statuses(children, max(1.0, deadline - time.time()))
            now = round(time.perf_counter() - t_spawn, 2)
            for i, s in enumerate(sts):
                if s["applied_index"] >= target and "caught_up_s" not in nodes[i]:
                    nodes[i]["caught_up_s"] = now
            leaders = [c for c, s in zip(children, sts, strict=True) if s["is_leader"]]
            if (
                len(leaders) == 1
                and all(s["leader"] == leaders[0].addr for s in sts)
                and all(s["applied_index"] >= target for s in sts)
            ):
                leader = leaders[0]
                break
            await asyncio.sleep(0.25)
        await sampler.stop()
        out["recovery_s"] = round(time.perf_counter() - t_spawn, 2)
        out["leader"] = children.index(leader)
        hwm_reset = True
        for i, c in enumerate(children):
            st = proc_status(c.pid)
            nodes[i]["role"] = "leader" if c is leader else "follower"
            nodes[i]["rss_after_recovery_mib"] = _mib(st["VmRSS"])
            nodes[i]["rss_anon_after_recovery_mib"] = _mib(st.get("RssAnon", 0))
            nodes[i]["recovery_peak_mib"] = _mib(max(st["VmHWM"], sampler.max_rss[c.pid]))
            hwm_reset = reset_hwm(c.pid) and hwm_reset
        out["hwm_reset"] = hwm_reset

        # Load: closed-loop writers in the leader, in runs of a few seconds.
        sampler.start()
        t_load = time.perf_counter()
        stop_at = t_load + args.seconds
        ops = 0
        errors: dict[str, int] = {}
        lat_p99: list[float] = []
        chunk = 10 * args.concurrency
        while time.perf_counter() < stop_at:
            spec = {
                "ops": chunk,
                "warmup": 0,
                "concurrency": args.concurrency,
                "payload": args.payload,
                "progress": False,
            }
            t0 = time.perf_counter()
            left = max(1.0, deadline - time.time())
            if args.placement == "leader":
                res = await leader.request({"cmd": "run", "spec": spec}, "result", left)
            else:
                res = await asyncio.wait_for(client_workload(leader.addr, spec, None), left)
            dt = time.perf_counter() - t0
            if "error" in res:
                raise RuntimeError(f"workload failed: {res['error']}")
            lat = sorted(res["lat_us"])
            ops += len(lat)
            for k, v in res["errors"].items():
                errors[k] = errors.get(k, 0) + v
            if lat:
                lat_p99.append(lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000)
            # Next run: about 3 s worth (bounded), never less than 10 per writer.
            rate = len(lat) / dt if dt > 0 else 0.0
            left = stop_at - time.perf_counter()
            chunk = int(max(10 * args.concurrency, min(rate * 3.0, rate * max(left, 0.5))))
            sys.stderr.write(
                f"\r[load] {ops} writes, {rate:,.0f}/s, rss "
                + " ".join(f"{_mib(sampler.max_rss[p])}" for p in pids)
                + " MiB   "
            )
            sys.stderr.flush()
        sys.stderr.write("\n")
        load_s = time.perf_counter() - t_load
        await sampler.stop()
        out["load_s"] = round(load_s, 2)
        out["writes"] = ops
        out["writes_per_s"] = round(ops / load_s) if load_s > 0 else 0
        out["write_errors"] = errors
        # The leader's and followers' entry caches reach their budget only after this.
        cache_bytes = _node_default("log_cache_bytes")
        out["log_cache_bytes"] = cache_bytes
        out["cache_filled"] = ops * (args.payload + 16) >= cache_bytes
        out["worst_run_p99_ms"] = round(max(lat_p99), 2) if lat_p99 else None
        for i, c in enumerate(children):
            st = proc_status(c.pid)
            nodes[i]["rss_end_mib"] = _mib(st["VmRSS"])
            nodes[i]["load_peak_mib"] = _mib(max(st["VmHWM"], sampler.max_rss[c.pid]))
            nodes[i]["load_peak_sampled_mib"] = _mib(sampler.max_rss[c.pid])
        sts = await _statuses(children, 30.0)
        out["applied"] = [s["applied"] for s in sts]
    finally:
        await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)


# ------------------------------------------------------------------ main


async def amain(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    """Build, probe, recover, load; the JSON result and an exit code."""
    from pyjraft.bench.children import kill_all_children

    t_start = time.time()
    deadline = t_start + args.timeout
    tmp = tempfile.mkdtemp(prefix="pyjraft-memory-", dir=args.data_root)
    out: dict[str, Any] = {
        "log_bytes_requested": args.log_bytes,
        "payload": args.payload,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "placement": args.placement,
        "seconds": args.seconds,
        "segment_bytes": args.segment_bytes,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
    }
    code = 0
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    got_signal: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        got_signal.append(sig.name)
        if task is not None:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with asyncio.timeout(args.timeout):
            log0 = os.path.join(tmp, "node0", "default", "log")
            sys.stderr.write(f"[build] {args.log_bytes / _MiB:,.0f} MiB, batch {args.batch}\n")
            out["build"] = await asyncio.to_thread(
                build_log, log0, args.log_bytes, args.payload, args.batch, args.segment_bytes
            )
            last, seal_s = await asyncio.to_thread(seal_log, log0, args.segment_bytes)
            out["build"]["first_open_scan_s"] = round(seal_s, 2)
            if last != out["build"]["entries"]:
                raise RuntimeError(f"built {out['build']['entries']} entries, log holds {last}")
            out["entries"] = last
            out["log_bytes"] = out["build"]["log_bytes"]
            sys.stderr.write(f"[build] {out['build']}\n[probe] opening the log alone\n")
            out["open_alone"] = await asyncio.to_thread(
                _run_probe, log0, args.segment_bytes, max(1.0, deadline - time.time())
            )
            sys.stderr.write(f"[probe] {out['open_alone']}\n")
            if not args.open_only:
                for i in (1, 2):
                    await asyncio.to_thread(
                        shutil.copytree, os.path.join(tmp, "node0"), os.path.join(tmp, f"node{i}")
                    )
                sys.stderr.write("[recover] starting 3 nodes\n")
                await run_cluster(args, tmp, last, deadline, out)
    except TimeoutError:
        out["error"] = f"--timeout {args.timeout} s reached"
        code = 3
    except asyncio.CancelledError:
        out["error"] = f"cancelled ({', '.join(got_signal) or 'no signal'})"
        code = 3
    except Exception as e:
        out["error"] = repr(e)
        code = 2
    finally:
        kill_all_children()
        shutil.rmtree(tmp, ignore_errors=True)
        out["wall_s"] = round(time.time() - t_start, 1)
    peaks = [
        max(n.get("recovery_peak_mib", 0.0), n.get("load_peak_mib", 0.0))
        for n in out.get("nodes", [])
    ]
    if args.open_only and "open_alone" in out:
        peaks = [out["open_alone"]["hwm_mib"]]
    out["max_rss_mib"] = max(peaks) if peaks else None
    out["goal_rss_mib"] = GOAL_RSS_MIB
    out["ok"] = bool(peaks) and code == 0 and max(peaks) < GOAL_RSS_MIB
    return out, code


def render(out: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = []
    b = out.get("build")
    if isinstance(b, dict):
        lines.append(
            f"log: {b['log_bytes'] / _MiB:,.0f} MiB in {b['segments']} segments, "
            f"{b['entries']:,} entries of {out['payload']} B in {b['batches']:,} batches "
            f"(--batch {out['batch']}); written in {b['write_s']} s, "
            f"first open (full scan) {b['first_open_scan_s']} s"
        )
    p = out.get("open_alone")
    if isinstance(p, dict):
        lines.append(
            f"open alone: {p['open_s']} s, RSS {p['rss_before_mib']} -> {p['rss_after_mib']} MiB "
            f"(+{p['rss_delta_mib']}), peak {p['hwm_mib']} MiB, index arrays "
            f"{p['index_arrays_mib']} MiB"
        )
    nodes = out.get("nodes")
    if isinstance(nodes, list) and nodes:
        lines.append(
            f"{'node':<14}{'open s':>8}{'applied s':>11}{'RSS after rec':>15}"
            f"{'rec peak':>10}{'load peak':>11}{'RSS end':>9}   (MiB)"
        )
        for n in nodes:
            lines.append(
                f"{'node' + str(n['node']) + ' ' + n.get('role', '?'):<14}"
                f"{n.get('open_s', '-')!s:>8}{n.get('caught_up_s', '-')!s:>11}"
                f"{n.get('rss_after_recovery_mib', '-')!s:>15}"
                f"{n.get('recovery_peak_mib', '-')!s:>10}{n.get('load_peak_mib', '-')!s:>11}"
                f"{n.get('rss_end_mib', '-')!s:>9}"
            )
    if "writes" in out:
        lines.append(
            f"load: {out['writes']:,} writes of {out['payload']} B at concurrency "
            f"{out['concurrency']} ({out['placement']}) in {out['load_s']} s "
            f"({out['writes_per_s']:,}/s), "
            f"errors {out['write_errors'] or 0}"
        )
    if out.get("cache_filled") is False:
        lines.append(
            "WARNING: fewer bytes written than log_cache_bytes: the entry caches never "
            "filled, so the load peak is low; run longer (--seconds)"
        )
    if out.get("max_rss_mib") is not None:
        verdict = "OK" if out["ok"] else "OVER"
        lines.append(
            f"max RSS of any node: {out['max_rss_mib']} MiB; goal < {GOAL_RSS_MIB} MiB: {verdict}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        prog="python -m pyjraft.bench.memory",
        description="RSS of 3 pyjraft node processes that recover a large log, then "
        "serve closed-loop writes.",
    )
    ap.add_argument("--log-bytes", type=parse_size, default=parse_size("1GiB"))
    ap.add_argument("--payload", type=int, default=100, help="bytes per entry and per write")
    ap.add_argument(
        "--batch",
        type=int,
        default=1,
        help="entries per batch record in the built log (1: written at concurrency 1, "
        "the largest index; 1000: written under 1,000 in-flight writes)",
    )
    ap.add_argument("--concurrency", type=int, default=1000, help="writes in flight")
    ap.add_argument(
        "--placement",
        choices=["client", "leader"],
        default="client",
        help="writers in this process over TCP (default), or inside the leader",
    )
    ap.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="duration of the write load (long enough to fill the entry caches)",
    )
    ap.add_argument("--data-root", default=None, help="parent of the temp data dirs")
    ap.add_argument(
        "--open-only", action="store_true", help="build and open the log alone; no cluster"
    )
    ap.add_argument("--timeout", type=float, default=1200.0, help="bound on the whole run (s)")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    ap.add_argument("--segment-bytes", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--probe-open", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.segment_bytes is None:
        args.segment_bytes = _node_default("segment_bytes")
    if args.payload < 0 or args.batch < 1 or args.concurrency < 1 or args.seconds <= 0:
        ap.error("--payload >= 0, --batch and --concurrency >= 1, --seconds > 0")
    if args.log_bytes < 1 or args.timeout <= 0:
        ap.error("--log-bytes and --timeout must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; print the report, then the JSON line."""
    args = parse_args(argv)
    if args.probe_open is not None:
        print(json.dumps(probe_open(args.probe_open, args.segment_bytes)))
        return 0
    from pyjraft.bench.children import kill_all_children

    try:
        out, code = asyncio.run(amain(args))
    finally:
        kill_all_children()
    print(render(out))
    if "error" in out:
        print(f"ERROR: {out['error']}")
    print(json.dumps(out, sort_keys=True, default=str))
    return code


if __name__ == "__main__":
    sys.exit(main())
