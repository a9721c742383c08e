"""What a simulated run is asked to do (`SimOptions`), what the seed drew for
it (`Profile`), and what it did (`SimResult`).

The options are the caller's; the profile is the seed's: every fault
intensity and configuration knob the run varies is drawn once, from the
run's own `random.Random`, so different seeds explore different regimes and
one seed always replays the same run.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

TICK = 100
"""Simulated time units per nominal tick; delays are in these units."""

REGIMES = ("mixed", "churn", "slow", "split", "figure8", "stale", "lease", "members")
"""Fault regimes a seed may draw: ``mixed`` partitions and crashes; ``churn``
kills leaders young and forces elections without waiting for timeouts;
``slow`` has slow disks and long, uneven message delays; ``split`` cuts the
cluster often; ``figure8`` cuts leaders off as they win and as their commit
index moves, so that logs diverge and old-term entries are re-replicated
(the paper's Figure 8); ``stale`` pauses leaders between accepting a
proposal and sending it, so their appends arrive after newer terms' ones;
``lease`` runs check-quorum everywhere on fast disks, reads often (half with
the lease), has followers campaign as early as check-quorum allows, and cuts
leaders off for long enough that a new one is elected and
acknowledges writes while the old one still believes it leads; ``members``
changes the configuration often, by leaps (several voters at once), and cuts
the cluster along each change as the leader puts it in force."""

_REGIME_WEIGHTS = (2, 2, 2, 2, 3, 4, 4, 4)
"""How often each of `REGIMES` is drawn: the specialist regimes, which set up
the rarest schedules, a little more often."""


@dataclass(slots=True)
class SimOptions:
    """Shape of one simulated run; fault intensities are drawn per seed on top."""

    nodes: int = 3
    chaos_ticks: int = 300
    """How long faults are injected."""
    election_bound_ticks: int = 150
    """After healing, a leader must exist within this many ticks."""
    converge_bound_ticks: int = 600
    """After healing, every acknowledged proposal must be applied everywhere within
    this, or else be getting there: see ``progress_bound_ticks``."""
    progress_bound_ticks: int = 150
    """Past ``converge_bound_ticks``, a run that has not converged must still apply
    something somewhere at least this often (a follower catching up thousands of
    entries one per message, one message in flight, is slow, not stuck), and
    converge within ``converge_cap_ticks`` of healing in any case."""
    converge_cap_ticks: int = 6000
    max_events: int = 1_000_000
    """A run that needs more events than this is a message storm (the cores keep
    answering each other without progress; correct runs stay under 30,000)."""
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    faults: bool = True
    regime: str | None = None
    """Force a fault regime (one of `REGIMES`); None lets the seed choose."""
    core_factory: Any = None
    """Builds a core from (config, log, hard_state, rng); lets tests inject broken cores."""


@dataclass(slots=True)
class Profile:
    """Everything a seed draws about its run, before the run starts."""

    regime: str
    pre_vote: tuple[bool, ...]
    """Per node (pre-vote and check-quorum are on, off, or mixed across nodes)."""
    check_quorum: tuple[bool, ...]
    drop: float
    dup: float
    reorder: float
    """Share of messages that may overtake earlier ones on their link."""
    max_delay: int
    """Usual message delay is uniform in [1, max_delay] time units."""
    tail: float
    """Share of messages delayed much longer (a slow path, a retransmission)."""
    tail_delay: int
    """Upper bound of such a long delay."""
    slow_links: frozenset[tuple[int, int]]
    """Links (by node position) whose every message takes a long delay."""
    clock_rate: tuple[int, ...]
    """Per node, the length of its tick in time units: clocks run at slightly
    different rates (within the lease's margin for drift)."""
    disk_latency: tuple[int, ...]
    """Per node: how long a write takes to become durable (0: at once)."""
    pipelined: bool
    """Leaders hand writes to a writer and go on (`NodeOptions.leader_write_thread`)."""
    fault_every: int
    fault_actions: tuple[str, ...]
    kill_new_leaders: float
    kill_on_commit: float
    """Chance that a leader dies the moment its commit index moves, before it
    tells anyone (the schedule of the paper's Figure 8)."""
    isolate_on_win: float
    """Chance that a candidate is cut off from everyone the moment it wins
    (healing every other cut): its first appends are lost and its new entries
    stay on its own disk, while the others elect someone else."""
    lag_on_win: float
    """Chance that a candidate's messages, for a while after it wins, all take
    a long delay: its first appends arrive after newer terms' appends."""
    pause_after_propose: float
    """Chance that a leader's process pauses right after it accepts proposals,
    before sending them (see the ``pause`` fault)."""
    garble: float
    """Chance that each delivery is preceded by a garbled copy of its message,
    broken so that no correct peer could send it (`pyjraft.testing.sim.garble`)."""
    kill_on_win: float
    """Chance that a candidate dies the moment it wins, before its first
    appends leave: its new entries then exist on its disk only."""
    crash_mid_ready: float
    propose_every: int
    snapshot_every: int
    """Each node snapshots its state machine every this many applied entries
    (0: never) and compacts its log behind it, keeping ``compact_margin``."""
    compact_margin: int
    snapshot_transfer: int
    """How long streaming a snapshot to a follower takes."""
    snapshot_fail: float
    """Chance that a transfer fails (the connection broke, it timed out)."""
    snapshot_dup: float
    """Chance that a finished transfer is offered again later (a retried RPC
    whose first answer was lost): by then usually stale."""
    read_every: int
    """Time between client reads (0: none)."""
    lease_reads: bool
    """Half the reads ask for the lease (only where every node runs check-quorum)."""
    spares: int
    """Nodes beyond ``SimOptions.nodes``: not members at first."""
    split_on_change: float
    """Chance that the cluster is cut along a configuration change the moment
    the leader puts it in force (see `Adversary.conf_appended`)."""
    conf_change_every: int
    """Time between membership changes and leadership transfers (0: none)."""
    initial_learners: int
    """How many of the spares start as learners of the initial configuration
    (read replicas from the start), rather than outside the group."""
    campaign_at_lease_end: float
    """Chance that a follower campaigns the moment an election timeout has
    passed since it last heard from a leader (as if its randomized timeout drew
    its minimum), and again a tick later if still without a leader: the
    earliest check-quorum lets anyone be elected, and so the moment a deposed
    leader's lease must be over."""
    max_inflight_msgs: int
    max_inflight_bytes: int
    max_entries_per_msg: int
    max_bytes_per_msg: int


_FAULTS: dict[str, tuple[str, ...]] = {
    "mixed": (
        "partition",
        "oneway",
        "isolate",
        "crash",
        "crash_leader",
        "restart",
        "heal",
        "pause",
        "isolate_leader",
    ),
    "churn": (
        "crash_leader",
        "restart",
        "restart",
        "isolate",
        "heal",
        "partition",
        "force_election",
        "force_election",
    ),
    "figure8": ("crash_leader", "restart", "restart", "isolate"),
    "lease": ("isolate_leader", "isolate_leader", "heal", "restart"),
    "members": ("heal", "heal", "force_election", "crash_leader", "restart", "restart"),
    "stale": ("pause", "pause", "restart", "crash_leader", "heal"),
    "slow": ("crash", "restart", "isolate", "heal", "force_election", "crash_leader", "pause"),
    "split": (
        "partition",
        "oneway",
        "heal",
        "heal",
        "restart",
        "crash",
        "force_election",
        "pause",
        "isolate_leader",
    ),
}


def draw_profile(rng: random.Random, opt: SimOptions, more: random.Random | None = None) -> Profile:
    """Draw one seed's regime and fault intensities. Knobs added later are drawn
    from ``more`` (a second stream of the same seed), so that a seed whose new
    knobs are off replays as it did before they existed (its regression value
    stays)."""
    more = more or random.Random(0)
    faults = opt.faults
    regime = opt.regime or rng.choices(REGIMES, _REGIME_WEIGHTS)[0]
    if regime not in _FAULTS:
        raise ValueError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    # Spare nodes start outside the group (no configuration) and may be added
    # by membership changes; every per-node array covers them too.
    spares = rng.choice([0, 0, 1, 2]) if faults else 0
    if regime == "members" or (faults and not spares and more.random() < 0.25):
        spares = 2
    n = opt.nodes + spares
    election = rng.choice(("on", "on", "off", "mixed", "pre_vote_only", "check_quorum_only"))
    if regime == "lease":
        election = "on"
    if election == "mixed":
        pre_vote = tuple(rng.random() < 0.5 for _ in range(n))
        check_quorum = tuple(rng.random() < 0.5 for _ in range(n))
    else:
        pv = election in ("on", "pre_vote_only")
        cq = election in ("on", "check_quorum_only")
        pre_vote, check_quorum = (pv,) * n, (cq,) * n
    slow = regime == "slow"
    if faults:
        drop = rng.choice([0.0, 0.01, 0.05, 0.2])
        dup = rng.choice([0.0, 0.02, 0.1])
        reorder = rng.choice([0.0, 0.01, 0.1])
        max_delay = rng.choice([5, 30, 150, 400] if slow else [5, 30, 150])
        tail = rng.choice([0.0, 0.02, 0.1] if regime in ("slow", "split") else [0.0, 0.0, 0.02])
        tail_delay = rng.choice([5, 20, 60]) * TICK
        pairs = [(a, b) for a in range(n) for b in range(n) if a != b]
        slow_links = frozenset(p for p in pairs if slow and rng.random() < 0.2)
        latencies = [0, 0, 20, 300, 1000] if not slow else [0, 300, 1000, 3000]
        disk_latency = tuple(rng.choice(latencies) for _ in range(n))
        crash_mid_ready = rng.choice([0.0, 0.0, 0.001, 0.005])
    else:
        drop = dup = reorder = tail = 0.0
        max_delay, tail_delay = 5, 0
        slow_links = frozenset()
        disk_latency = (0,) * n
        crash_mid_ready = 0.0
    fault_every = rng.choice([3, 10, 30, 100]) * TICK
    # The adversary's targeted crash points (see `Profile`), at a low rate in
    # every regime; the specialist regimes below raise them.
    kill_new_leaders = kill_on_win = lag_on_win = 0.0
    kill_on_commit = rng.choice([0.0, 0.02])
    isolate_on_win = rng.choice([0.0, 0.0, 0.2])
    pause_after_propose = rng.choice([0.0, 0.0, 0.02])
    if regime == "churn":
        fault_every = rng.choice([1, 2, 4]) * TICK
        kill_new_leaders = rng.choice([0.2, 0.5])
        kill_on_commit = rng.choice([0.0, 0.1, 0.3])
        kill_on_win = rng.choice([0.0, 0.1, 0.3])
    elif regime == "figure8":
        fault_every = rng.choice([10, 20]) * TICK
        kill_new_leaders = rng.choice([0.0, 0.1])
        kill_on_commit = rng.choice([0.3, 0.6])
        isolate_on_win = rng.choice([0.7, 0.9])
        drop = min(drop, 0.01)
        crash_mid_ready = 0.0
    elif regime == "split":
        fault_every = rng.choice([2, 5, 10]) * TICK
    elif regime == "lease":
        fault_every = rng.choice([20, 30]) * TICK
        crash_mid_ready = pause_after_propose = isolate_on_win = kill_on_commit = 0.0
        drop = min(drop, 0.01)
        max_delay = min(max_delay, 30)
        # Fast disks: a vote that takes longer to persist than the gap between
        # a deposed leader's last lease and its step-down would close the gap.
        disk_latency = tuple(min(latency, 20) for latency in disk_latency)
    elif regime == "stale":
        fault_every = rng.choice([10, 20, 30]) * TICK
        lag_on_win = rng.choice([0.0, 0.3])
        pause_after_propose = rng.choice([0.02, 0.05, 0.1])
        drop = min(drop, 0.01)
        crash_mid_ready = 0.0
    garble = rng.choice([0.0, 0.0, 0.0, 0.01, 0.05]) if faults else 0.0
    tiny_bytes = rng.random() < 0.25
    snapshot_every = rng.choice([0, 0, 10, 30, 30, 100, 400])
    conf_change_every = (rng.choice([0, 0, 10, 30]) * TICK) if faults else 0
    split_on_change = rng.choice([0.0, 0.3]) if conf_change_every else 0.0
    if regime == "members":
        conf_change_every = rng.choice([3, 6]) * TICK
        split_on_change = rng.choice([0.5, 0.8])
    read_every = rng.choice([0, 5, 20, 100]) * TICK // 10
    initial_learners = 0
    if spares and more.random() < (0.7 if regime == "members" else 0.4):
        # Mostly every spare: learners then outnumber what a voter's vote is
        # worth, which is what a learner wrongly counted would show.
        initial_learners = more.choice([spares, spares, spares, 1])
    campaign_at_lease_end = 0.0
    if faults and all(check_quorum):
        campaign_at_lease_end = more.choice([0.5, 1.0] if regime == "lease" else [0.0, 0.0, 0.3])
    if regime == "lease":
        read_every = rng.choice([2, 5]) * TICK // 10
    return Profile(
        regime=regime,
        pre_vote=pre_vote,
        check_quorum=check_quorum,
        drop=drop,
        dup=dup,
        reorder=reorder,
        max_delay=max_delay,
        tail=tail,
        tail_delay=tail_delay,
        slow_links=slow_links,
        clock_rate=tuple(TICK + (rng.randrange(-9, 10) if faults else 0) for _ in range(n)),
        disk_latency=disk_latency,
        pipelined=rng.random() < 0.3,
        fault_every=fault_every,
        fault_actions=_FAULTS[regime],
        kill_new_leaders=kill_new_leaders,
        kill_on_commit=kill_on_commit if faults else 0.0,
        kill_on_win=kill_on_win if faults else 0.0,
        isolate_on_win=isolate_on_win if faults else 0.0,
        lag_on_win=lag_on_win if faults else 0.0,
        pause_after_propose=pause_after_propose if faults else 0.0,
        garble=garble,
        crash_mid_ready=crash_mid_ready,
        propose_every=rng.choice([2, 10] if regime == "lease" else [2, 10, 40]) * TICK // 10,
        snapshot_every=snapshot_every,
        compact_margin=rng.choice([0, 0, 5, 50]),
        snapshot_transfer=rng.choice([1, 5, 20]) * TICK,
        snapshot_fail=rng.choice([0.0, 0.1, 0.3]) if faults else 0.0,
        snapshot_dup=rng.choice([0.0, 0.3, 0.6]) if faults else 0.0,
        read_every=read_every,
        spares=spares,
        conf_change_every=conf_change_every,
        split_on_change=split_on_change,
        initial_learners=initial_learners,
        campaign_at_lease_end=campaign_at_lease_end,
        lease_reads=all(check_quorum) and (regime == "lease" or rng.random() < 0.7),
        max_inflight_msgs=1 if regime == "figure8" else rng.choice([1, 4, 256]),
        max_inflight_bytes=rng.choice([64, 1024]) if tiny_bytes else 64 << 20,
        max_entries_per_msg=1 if kill_new_leaders else rng.choice([1, 8, 4096]),
        max_bytes_per_msg=rng.choice([48, 512]) if tiny_bytes else 1 << 20,
    )


@dataclass(slots=True)
class SimResult:
    """What a run did, and the first violation if any."""

    seed: int
    violation: Any = None
    """The first `pyjraft.testing.sim.checker.Violation`, or None."""
    entries_committed: int = 0
    proposals_acked: int = 0
    messages: int = 0
    elections: int = 0
    ticks: int = 0
    events: int = 0
    crashes: int = 0
    regime: str = ""
    bad_messages: int = 0
    """Messages the cores dropped as impossible (garbled ones included)."""
    reads: int = 0
    reads_served: int = 0
    conf_changes: int = 0
    """Configuration changes the leaders accepted."""
    conf_changes_done: int = 0
    transfers: int = 0
    split_on_change: int = 0
    snapshots_taken: int = 0
    snapshots_installed: int = 0
    """Snapshots followers restored from their leader."""
    snapshot_transfers_failed: int = 0
    garbled: int = 0
    """Garbled copies delivered (each must be among the dropped)."""
    stale_deliveries: Counter[str] = field(default_factory=Counter)
    """Messages delivered to a node whose term had moved past theirs, by kind."""
