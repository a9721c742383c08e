"""Run simulator seeds, or score the planted bugs.

``python -m pyjraft.testing.sim --seeds N [--start S] [--nodes 3|5] [--jobs J]``
runs the real core; each violation is printed with its seed, and the last
line is one JSON object (``seeds``, ``violations``, ``seconds``,
``seeds_per_second``, ``entries_committed``, stale deliveries by kind, ...).
Exits 1 if any seed violated a property.

``python -m pyjraft.testing.sim --mutants [NAME,...] --seeds N`` runs every
planted bug of `pyjraft.testing.sim.mutants` (or those named) over N seeds
with 3 and with 5 nodes, prints how many seeds caught each and the first
that did, and exits 1 if any was caught in fewer than 5% of the seeds or
not within the first 100.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

from pyjraft.testing.sim.mutants import MUTANTS, by_name
from pyjraft.testing.sim.options import REGIMES
from pyjraft.testing.sim.runner import SeedJob, run_jobs, score_mutant

MIN_CATCH_RATE = 0.05
"""A planted bug must be caught in at least this share of seeds..."""
CATCH_WITHIN = 100
"""...and by one of the first this many."""


def _run_core(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    jobs = [
        SeedJob(s, args.nodes or (3 if s % 2 == 0 else 5), args.chaos_ticks, args.regime)
        for s in range(args.start, args.start + args.seeds)
    ]
    violations = 0
    totals: Counter[str] = Counter()
    stale: Counter[str] = Counter()
    regimes: Counter[str] = Counter()
    for done, res in enumerate(run_jobs(jobs, args.jobs), 1):
        totals["entries_committed"] += res.entries_committed
        totals["proposals_acked"] += res.proposals_acked
        totals["messages"] += res.messages
        totals["elections"] += res.elections
        totals["crashes"] += res.crashes
        totals["garbled"] += res.garbled
        totals["reads"] += res.reads
        totals["conf_changes"] += res.conf_changes
        totals["conf_changes_done"] += res.conf_changes_done
        totals["transfers"] += res.transfers
        totals["reads_served"] += res.reads_served
        totals["snapshots_taken"] += res.snapshots_taken
        totals["snapshots_installed"] += res.snapshots_installed
        totals["snapshot_transfers_failed"] += res.snapshot_transfers_failed
        totals["bad_messages"] += res.bad_messages
        stale.update(res.stale_deliveries)
        regimes[res.regime] += 1
        if res.violation is not None:
            violations += 1
            nodes = jobs[done - 1].nodes
            print(
                f"VIOLATION seed={res.seed} nodes={nodes} regime={res.regime}: {res.violation}",
                flush=True,
            )
        if not args.quiet and done % 1000 == 0:
            print(
                f"{done} seeds, {violations} violations, {time.perf_counter() - started:.1f}s",
                file=sys.stderr,
                flush=True,
            )
    seconds = time.perf_counter() - started
    summary = {
        "seeds": args.seeds,
        "start": args.start,
        "violations": violations,
        "seconds": round(seconds, 3),
        "seeds_per_second": round(args.seeds / seconds, 2) if seconds else 0.0,
        "jobs": args.jobs,
        **totals,
        "entries_per_second": round(totals["entries_committed"] / seconds, 1) if seconds else 0.0,
        "stale_deliveries": dict(sorted(stale.items())),
        "regimes": dict(sorted(regimes.items())),
    }
    print(json.dumps(summary))
    return 1 if violations else 0


def _run_mutants(args: argparse.Namespace) -> int:
    names = [m.name for m in MUTANTS] if args.mutants == "all" else args.mutants.split(",")
    for name in names:
        by_name(name)  # unknown names fail before any work
    seeds = range(args.start, args.start + args.seeds)
    node_counts = [args.nodes] if args.nodes else [3, 5]
    failed = 0
    rows = []
    started = time.perf_counter()
    for name in names:
        for nodes in node_counts:
            score = score_mutant(name, nodes, seeds, processes=args.jobs)
            early = score.first is not None and score.first < args.start + CATCH_WITHIN
            ok = score.rate >= MIN_CATCH_RATE and early
            failed += not ok
            row = {
                "mutant": name,
                "nodes": nodes,
                "seeds": score.seeds,
                "caught": score.caught,
                "rate": round(score.rate, 3),
                "first_seed": score.first,
                "props": dict(score.props.most_common()),
                "ok": ok,
            }
            rows.append(row)
            print(
                f"{'ok  ' if ok else 'MISS'} {name:28} nodes={nodes} caught {score.caught}/"
                f"{score.seeds} ({score.rate:.1%}) first seed {score.first}  "
                f"{dict(score.props.most_common(3))}",
                flush=True,
            )
    print(
        json.dumps(
            {
                "mutants": rows,
                "missed": failed,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m pyjraft.testing.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=None, help="default: both")
    p.add_argument("--chaos-ticks", type=int, default=300, help="ticks of fault injection per seed")
    p.add_argument("--regime", choices=REGIMES, default=None, help="default: each seed draws")
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument(
        "--mutants",
        nargs="?",
        const="all",
        default=None,
        metavar="NAME,...",
        help="score planted bugs instead of running the real core (default: all of them)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.mutants is not None:
        return _run_mutants(args)
    return _run_core(args)


if __name__ == "__main__":
    sys.exit(main())
