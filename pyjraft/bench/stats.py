"""Latency percentiles and summaries shared by the driver and the node processes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(sorted_vals: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) of ascending ``sorted_vals``, linearly
    interpolated between closest ranks; ``nan`` for an empty sequence."""
    if not sorted_vals:
        return float("nan")
    k = (len(sorted_vals) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(sorted_vals) - 1)
    return sorted_vals[f] + (sorted_vals[c] - sorted_vals[f]) * (k - f)


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Throughput and latency (milliseconds) of one measured phase."""

    ok: int
    errors: int
    elapsed_s: float
    ops_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict, floats rounded for printing."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(lat_us: Sequence[int], errors: int, elapsed_s: float) -> LatencySummary:
    """Summarize successful-write latencies in microseconds over ``elapsed_s``."""
    ms = sorted(x / 1000.0 for x in lat_us)
    n = len(ms)
    return LatencySummary(
        ok=n,
        errors=errors,
        elapsed_s=elapsed_s,
        ops_per_s=n / elapsed_s if elapsed_s > 0 else 0.0,
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        p999_ms=percentile(ms, 99.9),
        mean_ms=sum(ms) / n if n else float("nan"),
        max_ms=ms[-1] if ms else float("nan"),
    )
