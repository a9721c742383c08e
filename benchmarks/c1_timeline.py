"""Where a write's time goes at concurrency 1: a timeline across the 3 processes.

Runs ``python -m pyjraft.bench --concurrency 1`` (extra arguments are passed
on, e.g. ``--no-sync``) with `timeline_site/sitecustomize.py` recording
timestamps of a few steps in every node process (see its docstring for the
tags), then prints, for the most common sequence of steps between two
submits on the leader, the median time of each step after the submit, on
the leader and on each follower. The tracing costs about 1 us per event.

    python benchmarks/c1_timeline.py [--ops N] [BENCH ARGS...]

Example (2 cores, sync off, 2026-11-27), microseconds after the submit: the
leader proposes (A 4) and writes the two AppendEntries (W 51, 70), then its
own log (D 124, P 152); the followers have them decoded (R) at 128-140,
written (P) at 186-201 and acknowledged (W) at 195-212, before applying the
previous entry (C 219-235); the leader takes the first acknowledgement (R)
at 240 and applies (C 280). A message hop costs 45-80 us here against about
22 us in a plain two-process ping-pong: wake-ups of idle processes (and
vCPUs: this is a Firecracker microVM whose idle vCPUs halt) and 3 processes
sharing 2 cores dominate, not Python.

In slower phases of the machine a second pattern is common: S 0, A 5, W 56,
W 116, F 381, R 427, R 482, D 508, C 576 -- the leader's second send wakes a
follower onto its own core and the leader gets the core back (F) only once
that follower has acknowledged. Taking the leader's own write and applying
a commit without waiting for the next loop turn moves D and C earlier in
this timeline by about 50 us, but no p50 over 5 interleaved A/B runs
(2026-11-27), so the node does not do that.
"""

from __future__ import annotations

import bisect
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    args = sys.argv[1:]
    if "--ops" not in args:
        args += ["--ops", "6000"]
    with tempfile.TemporaryDirectory() as folder:
        env = dict(os.environ)
        env["PYJRAFT_TIMELINE"] = folder
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (os.path.join(HERE, "timeline_site"), env.get("PYTHONPATH")) if p
        )
        cmd = [sys.executable, "-m", "pyjraft.bench", "--concurrency", "1", *args]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in run.stdout.splitlines() if not ln.startswith("{")]
        print("\n".join(ln for ln in lines if "ops/s  " not in ln))
        found = re.search(r"leader \S+ pid (\d+)", run.stdout + run.stderr)
        if run.returncode != 0 or found is None:
            print(run.stderr[-2000:], file=sys.stderr)
            return 1
        report(folder, found.group(1))
    return 0


def load(folder: str) -> dict[str, list[tuple[int, str]]]:
    events: dict[str, list[tuple[int, str]]] = {}
    for name in os.listdir(folder):
        with open(os.path.join(folder, name)) as f:
            rows = [(int(t), g) for t, g in (ln.split() for ln in f if ln.strip())]
        if rows:
            events[name.removesuffix(".txt")] = rows
    return events


def report(folder: str, leader: str) -> None:
    events = load(folder)
    lead = events.pop(leader, [])
    submits = [i for i, (_, g) in enumerate(lead) if g == "S"]
    if len(submits) < 100:
        print("too few traced writes (raise --ops)")
        return
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    offsets: dict[tuple[str, str, int], list[float]] = collections.defaultdict(list)
    skip = len(submits) // 10  # warm-up
    for i, j in zip(submits[skip:-1], submits[skip + 1 :], strict=False):
        start, end = lead[i][0], lead[j][0]
        for who, rows in [("leader", lead[i:j])] + [
            (pid, f[bisect.bisect_left(f, (start, "")) : bisect.bisect_left(f, (end, ""))])
            for pid, f in events.items()
        ]:
            seq = "".join(g for _, g in rows)
            counts[(who, seq)] += 1
            for k, (t, _) in enumerate(rows):
                offsets[(who, seq, k)].append((t - start) / 1000)
    for who in ["leader", *events]:
        mine = [(seq, n) for (w, seq), n in counts.items() if w == who]
        if not mine:
            continue
        seq, n = max(mine, key=lambda sn: sn[1])
        steps = ", ".join(
            f"{g} {statistics.median(offsets[(who, seq, k)]):.0f}" for k, g in enumerate(seq)
        )
        print(f"{who:>8} ({n} writes with this sequence): {steps}")


if __name__ == "__main__":
    sys.exit(main())
