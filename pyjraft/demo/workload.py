"""The demo's mixed workload, and the bookkeeping that lets it prove nothing was lost.

Theory of operation
-------------------
``concurrency`` tasks share one `pyjraft.kv.Client`. Each write puts a key
never written before (``demo/<task>/<seq>``) with a value of its own, so
every acknowledged write is a fact that must hold forever: that key has
that value. A write's outcome is one of three:

* acknowledged: recorded in `MixedWorkload.acked`;
* certainly not applied (the client says so: nothing was proposed before
  the deadline): counted as an error, not checked;
* unknown (`UnknownOutcomeError`: the leader died after receiving it):
  recorded in `MixedWorkload.unknown`; it may or may not be applied, and
  either is correct.

Each read (``read_fraction`` of the operations, linearizable) picks a key
whose write was acknowledged *before the read started*; a linearizable
read must then return that value. Any other answer is a stale read,
counted and kept as evidence. At the end the demo reads every replica's
store and checks every acknowledged write on each (`pyjraft.demo.kv_demo`).
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field

from pyjraft.bench.stats import summarize
from pyjraft.client import ClientError, UnknownOutcomeError
from pyjraft.kv import Client

KEY_PREFIX = b"demo/"
"""Every key the workload writes starts with this."""


@dataclass
class OpCounts:
    """What happened to the operations of one kind."""

    ok: int = 0
    errors: int = 0
    lat_us: list[int] = field(default_factory=list)


class MixedWorkload:
    """Writes and linearizable reads from ``concurrency`` tasks; see the module doc."""

    def __init__(
        self,
        client: Client,
        *,
        concurrency: int = 16,
        read_fraction: float = 0.5,
        seed: int = 1,
        value_bytes: int = 64,
    ) -> None:
        self.client = client
        self.concurrency = concurrency
        self.read_fraction = read_fraction
        self.seed = seed
        self.value_bytes = value_bytes
        self.puts = OpCounts()
        self.gets = OpCounts()
        self.acked: dict[bytes, bytes] = {}
        """Every acknowledged write: key -> value."""
        self._acked_keys: list[bytes] = []
        self.unknown: dict[bytes, bytes] = {}
        """Writes whose outcome is unknown: key -> value."""
        self.stale_reads: list[tuple[bytes, bytes, bytes | None]] = []
        """Reads that missed an acknowledged write: (key, expected, got)."""
        self.error_reasons: collections.Counter[str] = collections.Counter()
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.kill_at: float | None = None
        """When the leader was killed (`time.monotonic`), set by the demo."""
        self.first_write_after_kill: float | None = None
        """When the first write *started after* the kill was acknowledged."""
        self._ticks: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def ops(self) -> int:
        """Operations that succeeded, reads and writes."""
        return self.puts.ok + self.gets.ok

    def start(self) -> None:
        """Start the tasks."""
        self.started_at = time.monotonic()
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"demo-worker-{i}")
            for i in range(self.concurrency)
        ]

    async def stop(self) -> None:
        """Let every task finish its operation in flight, then return."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stopped_at = time.monotonic()

    async def cancel(self) -> None:
        """Stop at once (Ctrl-C): operations in flight are abandoned."""
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stopped_at = time.monotonic()

    def rate(self, window: float = 1.0) -> float:
        """Operations per second over about the last ``window`` seconds."""
        now = time.monotonic()
        ops = self.ops
        self._ticks.append((now, ops))
        while len(self._ticks) > 2 and now - self._ticks[1][0] >= window:
            self._ticks.popleft()
        t0, n0 = self._ticks[0]
        return (ops - n0) / (now - t0) if now > t0 else 0.0

    def latency_ms(self) -> tuple[float, float]:
        """p50 and p99 (ms) of the last 2,000 operations of each kind."""
        recent = self.puts.lat_us[-2000:] + self.gets.lat_us[-2000:]
        s = summarize(recent, 0, 1.0)
        return s.p50_ms, s.p99_ms

    async def _worker(self, i: int) -> None:
        rng = random.Random(self.seed * 1_000_003 + i)
        seq = 0
        filler = bytes(rng.randrange(97, 123) for _ in range(self.value_bytes))
        while not self._stop.is_set():
            if self._acked_keys and rng.random() < self.read_fraction:
                await self._read(self._acked_keys[rng.randrange(len(self._acked_keys))])
            else:
                key = KEY_PREFIX + b"%02d/%08d" % (i, seq)
                seq += 1
                await self._write(key, b"%d:%d:" % (i, seq) + filler)

    async def _write(self, key: bytes, value: bytes) -> None:
        t0 = time.monotonic()
        try:
            await self.client.put(key, value)
        except UnknownOutcomeError:
            self.unknown[key] = value
            self.error_reasons["unknown outcome"] += 1
            return
        except ClientError as e:
            self.puts.errors += 1
            self.error_reasons[type(e).__name__] += 1
            return
        t1 = time.monotonic()
        self.puts.ok += 1
        self.puts.lat_us.append(int((t1 - t0) * 1e6))
        self.acked[key] = value
        self._acked_keys.append(key)
        if self.kill_at is not None and self.first_write_after_kill is None and t0 > self.kill_at:
            self.first_write_after_kill = t1

    async def _read(self, key: bytes) -> None:
        expected = self.acked[key]
        t0 = time.monotonic()
        try:
            kv = await self.client.get(key)
        except ClientError as e:
            self.gets.errors += 1
            self.error_reasons[type(e).__name__] += 1
            return
        self.gets.ok += 1
        self.gets.lat_us.append(int((time.monotonic() - t0) * 1e6))
        got = None if kv is None else kv.value
        if got != expected:
            self.stale_reads.append((key, expected, got))


__all__ = ["KEY_PREFIX", "MixedWorkload", "OpCounts"]
