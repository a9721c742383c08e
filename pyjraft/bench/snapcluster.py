"""What the snapshot benchmarks (``benchmarks/snapshot_*.py``) share: three
`pyjraft.bench.server` processes with chosen options, stopped, resumed,
restarted and watched from outside (status, RSS, data directory sizes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import time
from collections.abc import Sequence
from typing import Any

from pyjraft.bench.children import Child, kill_all_children
from pyjraft.testing.ports import free_ports


class SnapCluster:
    """Three bench node processes in ``root`` (``node0..2`` data, ``nodeN.log``)."""

    def __init__(self, root: str, node_args: Sequence[str], *, hours: float = 2.0) -> None:
        self.root = root
        self.node_args = list(node_args)
        self.ports = free_ports(3)
        self.addrs = [f"127.0.0.1:{p}" for p in self.ports]
        self.children: list[Child | None] = [None, None, None]
        self.deadline = time.time() + hours * 3600

    def data_dir(self, i: int) -> str:
        """Node ``i``'s data directory."""
        return os.path.join(self.root, f"node{i}")

    async def start(self, i: int, extra: Sequence[str] = ()) -> Child:
        """Start (or restart) node ``i``; returns once it says ``ready``."""
        argv = ["-m", "pyjraft.bench.server", "--port", str(self.ports[i])]
        argv += ["--peers", ",".join(self.addrs), "--data-dir", self.data_dir(i)]
        argv += ["--deadline", str(self.deadline), *self.node_args, *extra]
        log = os.path.join(self.root, f"node{i}.log")
        child = await Child.spawn(f"node{i}", argv, log)
        self.children[i] = child
        child.addr = (await child.expect("ready", 60.0))["addr"]
        return child

    async def start_all(self) -> None:
        """Start the three nodes."""
        await asyncio.gather(*(self.start(i) for i in range(3)))

    def child(self, i: int) -> Child:
        """Node ``i``'s running process."""
        c = self.children[i]
        assert c is not None, f"node{i} is not running"
        return c

    async def status(self, i: int) -> dict[str, Any]:
        """Node ``i``'s ``status`` reply."""
        return await self.child(i).request({"cmd": "status"}, "status", 30.0)

    async def leader(self, timeout: float = 30.0) -> int:
        """The index of the node every running member follows (and that leads)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            running = [i for i in range(3) if self.children[i] is not None]
            sts = {i: await self.status(i) for i in running}
            leaders = [i for i, s in sts.items() if s["is_leader"]]
            if len(leaders) == 1:
                lead = sts[leaders[0]]
                if lead["applied_index"] >= lead["commit_index"] >= 1 and all(
                    s["leader"] == lead["addr"] for s in sts.values()
                ):
                    return leaders[0]
            await asyncio.sleep(0.05)
        raise RuntimeError("no leader")

    async def run(self, i: int, spec: dict[str, Any], timeout: float = 3600) -> dict[str, Any]:
        """A closed-loop workload on node ``i`` (see `pyjraft.bench.server`)."""
        res = await self.child(i).request({"cmd": "run", "spec": spec}, "result", timeout)
        if "error" in res:
            raise RuntimeError(f"node{i}: {res['error']}")
        return res

    async def snapshot(self, i: int, timeout: float = 600) -> dict[str, Any]:
        """`Node.snapshot` on node ``i``."""
        res = await self.child(i).request({"cmd": "snapshot"}, "snapshot", timeout)
        if "error" in res:
            raise RuntimeError(f"node{i}: {res['error']}")
        return res

    def signal(self, i: int, sig: int) -> None:
        """Send ``sig`` to node ``i``."""
        os.kill(self.child(i).pid, sig)

    async def kill(self, i: int) -> None:
        """SIGKILL node ``i`` and reap it."""
        child = self.child(i)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        await child.stop(grace=0.1)
        self.children[i] = None

    async def stop(self) -> None:
        """Stop every node."""
        for c in self.children:
            if c is not None:
                with contextlib.suppress(Exception):
                    os.kill(c.pid, signal.SIGCONT)
        await asyncio.gather(
            *(c.stop() for c in self.children if c is not None), return_exceptions=True
        )
        kill_all_children()


def rss_bytes(pid: int) -> int:
    """``pid``'s resident set size now (Linux)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Samples the RSS of some processes every ``period`` seconds (a task)."""

    def __init__(self, pids: Sequence[int], period: float = 0.01) -> None:
        self.pids = list(pids)
        self.base = {p: rss_bytes(p) for p in self.pids}
        self.peak = dict(self.base)
        self._task = asyncio.ensure_future(self._run(period))

    async def _run(self, period: float) -> None:
        while True:
            for p in self.pids:
                with contextlib.suppress(OSError):
                    self.peak[p] = max(self.peak[p], rss_bytes(p))
            await asyncio.sleep(period)

    async def stop(self) -> dict[int, int]:
        """Stop; the peak growth over the start, per pid, in bytes."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return {p: self.peak[p] - self.base[p] for p in self.pids}


def dir_bytes(path: str) -> int:
    """Bytes of the regular files under ``path``."""
    total = 0
    for parent, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(parent, name))
    return total


def summary(values: Sequence[float], nd: int = 1) -> str:
    """``median (min-max)`` of ``values``."""
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.{nd}f} ({min(values):.{nd}f}-{max(values):.{nd}f})"


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` percentile (0-100) of ``values``, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]
