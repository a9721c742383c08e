"""Running many seeds, in parallel processes, and scoring planted bugs.

`run_seeds` runs a range of seeds (3 and 5 nodes alternating unless told)
and yields each result as it completes, in seed order; `score_mutant` runs
one planted bug (`pyjraft.testing.sim.mutants`) over a range of seeds and
tells how often, and how early, the simulator caught it.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from pyjraft.testing.sim.cluster import run_seed
from pyjraft.testing.sim.mutants import by_name
from pyjraft.testing.sim.options import SimOptions, SimResult


@dataclass(frozen=True, slots=True)
class SeedJob:
    """One seed to run: picklable, so it can go to a worker process."""

    seed: int
    nodes: int
    chaos_ticks: int = 300
    regime: str | None = None
    mutant: str | None = None
    """A name from `pyjraft.testing.sim.mutants.MUTANTS`, or None for the real core."""


def run_job(job: SeedJob) -> SimResult:
    """Run one `SeedJob` (in whatever process calls it)."""
    factory = by_name(job.mutant).factory if job.mutant else None
    options = SimOptions(
        nodes=job.nodes, chaos_ticks=job.chaos_ticks, regime=job.regime, core_factory=factory
    )
    return run_seed(job.seed, options)


def run_jobs(jobs: list[SeedJob], processes: int = 1) -> Iterator[SimResult]:
    """Run ``jobs``, yielding results in order; ``processes`` > 1 uses a pool."""
    if processes <= 1:
        for job in jobs:
            yield run_job(job)
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        yield from pool.imap(run_job, jobs, chunksize=4)


@dataclass(slots=True)
class MutantScore:
    """How the simulator did against one planted bug with one cluster size."""

    mutant: str
    nodes: int
    seeds: int = 0
    caught: int = 0
    first: int | None = None
    """The first seed that caught it."""
    props: Counter[str] = field(default_factory=Counter)
    """Which property reported it, how often."""

    @property
    def rate(self) -> float:
        """Share of seeds that caught it."""
        return self.caught / self.seeds if self.seeds else 0.0

    def add(self, res: SimResult) -> None:
        """Count one seed's result."""
        self.seeds += 1
        if res.violation is not None:
            self.caught += 1
            self.props[res.violation.prop] += 1
            if self.first is None or res.seed < self.first:
                self.first = res.seed


def score_mutant(
    name: str,
    nodes: int,
    seeds: range,
    *,
    processes: int = 1,
    stop_at_first: bool = False,
    chaos_ticks: int = 300,
) -> MutantScore:
    """Run mutant ``name`` over ``seeds``; with ``stop_at_first``, stop once caught."""
    score = MutantScore(name, nodes)
    jobs = [SeedJob(s, nodes, chaos_ticks, mutant=name) for s in seeds]
    if stop_at_first:
        for job in jobs:
            res = run_job(job)
            score.add(res)
            if res.violation is not None:
                break
        return score
    for res in run_jobs(jobs, processes):
        score.add(res)
    return score
