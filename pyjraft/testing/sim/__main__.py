"""Run simulator seeds: ``python -m pyjraft.testing.sim --seeds N [--start S] [--nodes 3|5]``.

Prints each violation with its seed, and as the last line one JSON object
with ``seeds``, ``violations``, ``seconds``, ``entries_committed`` and more.
Exits 1 if any seed violated a property.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from pyjraft.testing.sim.cluster import SimOptions, run_seed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m pyjraft.testing.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    p.add_argument("--start", type=int, default=0, help="first seed")
    p.add_argument("--nodes", type=int, choices=(3, 5), default=None, help="default: alternate")
    p.add_argument("--chaos-ticks", type=int, default=300, help="ticks of fault injection per seed")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    started = time.perf_counter()
    violations = 0
    committed = messages = acked = elections = 0
    for seed in range(args.start, args.start + args.seeds):
        nodes = args.nodes or (3 if seed % 2 == 0 else 5)
        res = run_seed(seed, SimOptions(nodes=nodes, chaos_ticks=args.chaos_ticks))
        committed += res.entries_committed
        messages += res.messages
        acked += res.proposals_acked
        elections += res.elections
        if res.violation is not None:
            violations += 1
            print(f"VIOLATION seed={seed} nodes={nodes}: {res.violation}", flush=True)
        done = seed - args.start + 1
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
        "entries_committed": committed,
        "entries_per_second": round(committed / seconds, 1) if seconds else 0.0,
        "proposals_acked": acked,
        "messages": messages,
        "elections": elections,
    }
    print(json.dumps(summary))
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
