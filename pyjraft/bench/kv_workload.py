"""The key-value benchmark's closed loop, the same for every store it drives.

``concurrency`` asyncio tasks in this process, each awaiting one operation
at a time on a shared client (pyjraft's `pyjraft.kv.Client`, one
multiplexed connection; etcd's gRPC client, one HTTP/2 channel), on keys
drawn from a seeded RNG. A warm-up (not recorded) precedes the measured
window; no operation starts after the window ends, those in flight finish
and count. Client CPU is measured too: the client is one Python process on
the same cores as the servers, and can be the limit.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pyjraft.bench.stats import summarize

Operation = Callable[[bytes], Awaitable[Any]]
"""One operation on a key (a put of the run's value, or a read)."""


def bench_key(i: int) -> bytes:
    """The ``i``-th key of the benchmark's key space."""
    return b"bench/%08d" % i


async def preload(put: Operation, keys: int, window: int = 256) -> None:
    """Write every key once (``window`` at a time), so reads find them."""
    for start in range(0, keys, window):
        await asyncio.gather(*(put(bench_key(i)) for i in range(start, min(keys, start + window))))


async def closed_loop(
    op: Operation,
    *,
    concurrency: int,
    seconds: float,
    keys: int,
    seed: int,
    warmup_s: float = 1.0,
    on_window: Callable[[str], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run ``op`` from ``concurrency`` tasks for ``warmup_s`` then ``seconds``;
    the summary of the measured window (`pyjraft.bench.stats.summarize` plus
    ``client_cpu_pct`` and ``error_reasons``). ``on_window("start"|"end")``
    is awaited just before and after the measured window (to read a server's
    counters around it)."""
    rng = random.Random(seed)
    lat_us: list[int] = []
    errors: dict[str, int] = {}
    record = False
    stop_at = 0.0
    clock = time.perf_counter_ns

    async def worker() -> None:
        while True:
            t0 = clock()
            if t0 >= stop_at:
                return
            key = bench_key(rng.randrange(keys))
            try:
                await op(key)
            except Exception as e:
                if record:
                    name = type(e).__name__
                    errors[name] = errors.get(name, 0) + 1
                continue
            if record:
                lat_us.append((clock() - t0) // 1000)

    if warmup_s > 0:
        stop_at = clock() + int(warmup_s * 1e9)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if on_window is not None:
        await on_window("start")
    record = True
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stop_at = clock() + int(seconds * 1e9)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    record = False
    if on_window is not None:
        await on_window("end")
    s = summarize(lat_us, sum(errors.values()), elapsed).as_dict()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    s["client_cpu_pct"] = round(100 * cpu / elapsed, 1) if elapsed > 0 else None
    s["error_reasons"] = errors
    return s


__all__ = ["Operation", "bench_key", "closed_loop", "preload"]
